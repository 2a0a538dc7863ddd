"""Stage folders that know what made them: skip when done with the same inputs, refuse others.

A stage folder holds ``stage.json`` (the resolved config and input checksums that define it,
written before the work starts) and ``complete.json`` (written when it ends). Rerunning with the
same definition skips a complete stage and resumes an incomplete one; a folder made from a
different definition is refused unless ``force``, which deletes it first; one that never
completed (no ``complete.json``: it failed or was stopped) is replaced without ``force``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sio.core.definition import differences, require_same
from sio.core.files import write_json_atomic

STAGE_FILE = "stage.json"
COMPLETE_FILE = "complete.json"


class StageConflict(RuntimeError):
    """An output folder that holds results for a different config."""


@dataclass(frozen=True)
class StageDefinition:
    """What a stage says defines its folder, so that the orchestrator mirrors no list of its:
    ``definition`` (plain JSON data: the resolved config section and the input checksums),
    ``resumable`` (dotted paths in it whose change the work adapts to, its output unchanged:
    the stage resumes or keeps its folder) and ``defaults`` (``{section: {field: default}}``:
    what a ``stage.json`` written before a field existed was made with; ``FormerKey(old)`` for
    a field renamed since, which such a file holds under its old name)."""

    definition: dict
    resumable: tuple[str, ...] = ()
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FormerKey:
    """A ``defaults`` entry for a renamed field: a ``stage.json`` written before the rename
    holds the field's value under ``name``."""

    name: str


def with_defaults(previous: dict, defaults: dict) -> dict:
    """``previous`` with every field it lacks inside its sections taken from ``defaults``
    (``{section: {field: default}}``): a stage recorded before a config field existed was made
    with that field's default. A section ``previous`` does not have is not added."""
    merged = dict(previous)
    for section, fields in defaults.items():
        if isinstance(merged.get(section), dict):
            merged[section] = _fill(merged[section], fields)
    return merged


def _fill(recorded: dict, defaults: dict) -> dict:
    """``recorded`` with the keys it lacks from ``defaults``, nested mappings filled alike; a
    field it holds under its ``FormerKey`` name takes its new name."""
    recorded = dict(recorded)
    for key, value in defaults.items():
        if isinstance(value, FormerKey) and key not in recorded and value.name in recorded:
            recorded[key] = recorded.pop(value.name)
    filled = {k: v for k, v in defaults.items() if not isinstance(v, FormerKey)} | recorded
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(recorded.get(key), dict):
            filled[key] = _fill(recorded[key], value)
    return filled


@dataclass(frozen=True)
class Verdict:
    """What a stage folder needs: ``action`` is one of skip (done), resume (unfinished, same
    definition), adapt (changed only in resumable fields), replace (unfinished, made
    differently), force (finished differently, --force), foreign (not a stage folder,
    --force), new, refuse; ``why`` says so in words."""

    action: str
    why: str
    changed: str = ""

    @property
    def runs(self) -> bool:
        return self.action not in ("skip", "refuse")


def stage_verdict(
    folder: Path, definition: dict, force: bool, resumable=(), defaults=None
) -> Verdict:
    """What ``needs_run`` will do with ``folder``, decided without touching it (``sio run
    --dry-run`` prints it)."""
    stamp = folder / STAGE_FILE
    complete = (folder / COMPLETE_FILE).is_file()
    if stamp.is_file():
        previous = with_defaults(json.loads(stamp.read_text()), defaults or {})
        if previous == definition:
            if complete:
                return Verdict("skip", "done earlier with the same config")
            return Verdict("resume", "unfinished: resumes")
        changed = ", ".join(differences(previous, definition)[:3])
        if not differences(previous, definition, ignore=resumable):
            return Verdict("adapt", f"changed only where the work adapts ({changed})")
        if not complete:
            return Verdict("replace", f"unfinished and made differently ({changed})", changed)
        if not force:
            return Verdict("refuse", f"holds results for a different config ({changed})")
        return Verdict("force", f"--force replaces results made differently ({changed})")
    if folder.exists() and any(folder.iterdir()):
        if not force:
            return Verdict("refuse", "exists and was not written by this stage")
        return Verdict("foreign", "--force replaces a folder this stage did not write")
    return Verdict("new", "not run yet")


def needs_run(folder: Path, definition: dict, force: bool, resumable=(), defaults=None) -> bool:
    """True if the stage must run (fresh, incomplete, changed only in ``resumable`` fields, or
    forced); False if it is done. ``defaults`` fills the fields an older stage.json lacks."""
    verdict = stage_verdict(folder, definition, force, resumable, defaults)
    if verdict.action == "skip":
        return False
    if verdict.action == "adapt":
        (folder / COMPLETE_FILE).unlink(missing_ok=True)  # the work itself adapts
    elif verdict.action == "refuse" and (folder / STAGE_FILE).is_file():
        previous = with_defaults(json.loads((folder / STAGE_FILE).read_text()), defaults or {})
        require_same(
            f"{folder} holds results for a different config",
            previous,
            definition,
            remedy="pass --force to replace them, or choose another output_dir",
            error=StageConflict,
        )
    elif verdict.action == "refuse":
        raise StageConflict(
            f"{folder} exists and was not written by this stage; pass --force to replace it"
        )
    elif verdict.action in ("replace", "force", "foreign"):
        if verdict.action == "replace":  # never completed: nothing worth keeping
            print(f"  {folder}: replacing an unfinished stage made differently ({verdict.changed})")
        shutil.rmtree(folder)
    return True


def run_stage(
    label: str,
    folder: Path,
    definition: dict | StageDefinition,
    work: Callable[[], object],
    *,
    force: bool,
    timings: dict,
    resumable: tuple[str, ...] = (),
    defaults: dict | None = None,
    record: dict | None = None,
) -> None:
    """Call ``work()`` unless ``folder`` is complete for ``definition``; prints its wall time.
    A change in only the ``resumable`` fields (dotted paths) reruns ``work()`` on the folder as
    it is, for work that adapts (a generation job resized), instead of refusing the folder. A
    ``StageDefinition`` (what a stage's API makes) brings its own ``resumable`` and ``defaults``.
    ``defaults`` (the config sections' default values) stands in for fields that a stage
    recorded by an older sio lacks, so adding a config field does not invalidate old runs.
    ``record`` goes into ``complete.json`` beside the seconds (what the work measured)."""
    folder = Path(folder)
    if isinstance(definition, StageDefinition):
        resumable, defaults = definition.resumable, definition.defaults
        definition = definition.definition
    if not needs_run(folder, definition, force, resumable, defaults):
        timings[label] = 0.0
        print(f"  {label}: done earlier with the same config, skipped", flush=True)
        return
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / STAGE_FILE, definition)
    work()
    seconds = time.perf_counter() - start
    write_json_atomic(folder / COMPLETE_FILE, {**(record or {}), "seconds": seconds})
    timings[label] = seconds
    print(f"  {label}: {seconds:.1f} s", flush=True)
