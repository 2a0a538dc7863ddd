"""The files of a resumable training loop: one checkpoint and the log rebuilt from it.

Both of sio's trainers (the classifier's, ``sio.train``, and the built-in DDPM's,
``sio.generate.ddpm``) are a plan (everything decided before step 0) and a state (what changes
and is checkpointed), advanced one step at a time. Their checkpoint is written atomically
(``save_checkpoint``) and holds what made the run (its definition), every RNG state the steps
draw from (``rng_state``), the step and the history of log lines; ``log.jsonl`` is rebuilt from
that history (``write_log``), so after a crash and a resume it holds each line exactly once.
``read_checkpoint`` reads one back as tensors only, refusing a file of another format.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from sio.core.files import atomic_path, write_text_atomic
from sio.core.weights import load_weights

LOG = "log.jsonl"


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` through ``atomic_path``; a full disk is the ``OSError`` of the failed write
    (naming ``path``), not torch's "file write failed" nor its error in closing the archive."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        try:
            torch.save(state, file)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def write_log(folder: Path, history: list[dict], name: str = LOG) -> None:
    """``folder/log.jsonl``: one JSON line per entry of the checkpoint's ``history``."""
    write_text_atomic(Path(folder) / name, "".join(json.dumps(line) + "\n" for line in history))


def read_checkpoint(path: Path, *, format, what: str, device: str | torch.device = "cpu") -> dict:
    """The dict of the checkpoint ``path``, read as tensors only (``load_weights``: nothing in it
    runs) and refused, naming the path, unless its ``format`` is the one given; ``what`` names
    the kind of file with its article (``an sio checkpoint``)."""
    state = load_weights(path, device, what=what.split(" ", 1)[1])
    if not isinstance(state, dict) or state.get("format") != format:
        kind = "a dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ValueError(f"{path}: not {what} (format {format!r}; it holds {kind})")
    return state


def rng_state(**generators: torch.Generator) -> dict:
    """This process's global RNG states (torch, CUDA, numpy, Python), as tensors and lists, and
    the state of each named ``torch.Generator``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), python_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update({name: generator.get_state() for name, generator in generators.items()})
    return state


def set_rng_state(state: dict, **generators: torch.Generator) -> None:
    """Restore what ``rng_state`` saved (a state saved without numpy's or Python's leaves
    theirs as they are)."""
    torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python" in state:
        version, internal, python_gauss = state["python"]
        random.setstate((version, tuple(internal), python_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, generator in generators.items():
        generator.set_state(state[name])
