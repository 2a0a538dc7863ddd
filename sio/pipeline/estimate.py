"""A rough time for ``sio run --dry-run``, from the rates this machine measured earlier.

Every stage ``sio run`` completes records, in its ``complete.json``, its wall time, its kind
(``train``, ``generate``, ...), the work it did in that kind's unit (images for the trainings and
FID; network passes for generation, so a sampler of 50 steps counts 50 times one of 1; one for
the other stages) and the host. A dry run divides each stage it would run by the rate of its
kind measured on this host in this run folder and the run folders beside it; a stage whose kind
was never measured here, or whose amount of work is not known yet (a training before the
benchmark exists), is counted as unknown, never guessed.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sio.core.stages import COMPLETE_FILE

UNITS = {
    "train": "images",
    "train generator": "images",
    "generate": "network passes",
    "fid": "images",
}
# a record without its unit was written when every kind counted images (before 2026-12-07)
FORMER_UNIT = "images"
RUN_RECORD = "pipeline.resolved.json"  # what marks a folder as a run folder of sio run


def stage_kind(label: str) -> str:
    """``train generator ddpm`` -> ``train generator``; ``train alpha1-seed0`` -> ``train``."""
    return "train generator" if label.startswith("train generator ") else label.split()[0]


def measurement(label: str, units: float | None) -> dict:
    """What a completed stage adds to its ``complete.json`` for later estimates."""
    kind = stage_kind(label)
    return {"kind": kind, "units": units, "unit": unit_of(kind), "host": socket.gethostname()}


def unit_of(kind: str) -> str:
    """What a stage of ``kind`` counts its work in (one per stage where it counts nothing)."""
    return UNITS.get(kind, "stage")


def network_passes(generator) -> int:
    """Network passes per image of a generator config (``GeneratorConfig``): a diffusion
    sampler's steps, twice with classifier-free guidance; 1 for a GAN."""
    if generator.name == "ddpm":
        steps, guided = generator.sampler.steps, generator.sampler.guidance != 1.0
    elif generator.name == "text2image":
        steps, guided = generator.text2image.steps, generator.text2image.guidance > 1.0
    else:
        return 1
    return steps * (2 if guided else 1)


def _counted(record: dict) -> bool:
    """A record of this host in its kind's unit today (an old one in images is not a pass)."""
    kind = record.get("kind")
    if not isinstance(kind, str):
        return False
    return record.get("unit", FORMER_UNIT if kind in UNITS else "stage") == unit_of(kind)


def run_folders(out: Path) -> list[Path]:
    """``out`` and the run folders beside it (those holding a ``pipeline.resolved.json``)."""
    siblings = sorted(p for p in out.parent.glob(f"*/{RUN_RECORD}")) if out.parent.is_dir() else []
    return [out, *(p.parent for p in siblings if p.parent != out)]


def measured_rates(folders: list[Path], host: str | None = None) -> dict[str, float]:
    """{stage kind: units per second} over the stages completed on ``host`` (this one) in
    ``folders``: their units summed over their seconds summed."""
    host = host or socket.gethostname()
    units: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for folder in folders:
        for depth in ("*", "*/*", "*/*/*"):
            for path in folder.glob(f"{depth}/{COMPLETE_FILE}"):
                record = _record(path)
                if record.get("host") != host or not _positive(record, "units", "seconds"):
                    continue
                if not _counted(record):
                    continue
                kind = record["kind"]
                units[kind] = units.get(kind, 0.0) + record["units"]
                seconds[kind] = seconds.get(kind, 0.0) + record["seconds"]
    return {kind: units[kind] / seconds[kind] for kind in units}


def _record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _positive(record: dict, *keys: str) -> bool:
    values = [record.get(key) for key in keys]
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@dataclass
class Estimate:
    """The seconds of the stages whose rate and work are known; the labels of the others."""

    seconds: float = 0.0
    known: int = 0
    unknown: list[str] = field(default_factory=list)

    def add(self, label: str, units: float | None, rates: dict[str, float]) -> None:
        rate = rates.get(stage_kind(label))
        if units is None or rate is None:
            self.unknown.append(label)
        else:
            self.seconds += units / rate
            self.known += 1

    def text(self) -> str:
        """One line: ``time: about 12 min for the 8 stages to run (this machine's rates
        measured earlier); unknown for 2: train x, fid y``."""
        if not self.known and not self.unknown:
            return "time: nothing to run"
        if not self.known:
            return (
                f"time: unknown (no rate measured on this machine for the {len(self.unknown)} "
                "stages to run; a completed sio run here measures them)"
            )
        line = (
            f"time: about {duration(self.seconds)} for {self.known} of the stages to run "
            "(at the rates this machine measured in earlier runs)"
        )
        if self.unknown:
            shown = ", ".join(self.unknown[:4]) + (", ..." if len(self.unknown) > 4 else "")
            line += f"; unknown for {len(self.unknown)}: {shown}"
        return line


def duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3 h 05 min``."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
