"""One training epoch and its log line, the same for one process and for DDP ranks.

Under DDP every rank takes its own share of the global batch (``rank_share`` of the real and of
the synthetic quota); its mean loss is scaled by its share of the global batch times the number
of ranks, so DDP's gradient average is the gradient of the global batch's mean loss. The log's
sums (loss, correct, real and synthetic samples, skipped data) are all-reduced, so the line
describes the global batches; images/s is the global count over the slowest rank's time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sio.train.distributed import World, all_max, all_sum
from sio.train.stream import SKIP_KINDS


@dataclass(frozen=True)
class EpochContext:
    """What the loop checks and logs beyond the objective: this rank's exact (real, synthetic)
    ``quota`` per batch, the global batch size, and an optional per-step composition log
    (``SIO_STEP_LOG``: a folder, one ``steps-rank<r>.jsonl`` per rank; for audits and tests)."""

    world: World = World()
    quota: tuple[int, int] | None = None
    batch_size: int | None = None
    step_log: str | None = None

    @classmethod
    def create(cls, world: World, quota: tuple[int, int], batch_size: int) -> EpochContext:
        return cls(world, quota, batch_size, os.environ.get("SIO_STEP_LOG") or None)


def _to_device(batch: dict, device) -> dict:
    non_blocking = str(device).startswith("cuda")
    return {
        k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        for k, v in batch.items()
    }


class _Totals:
    def __init__(self):
        self.values = dict.fromkeys(("loss", "correct", "real", "synthetic", "batches"), 0.0)
        self.skipped = torch.zeros(len(SKIP_KINDS), dtype=torch.int64)
        self.loss_sum = self.correct = None  # device tensors: no sync per step

    def add(self, loss, logits, labels, counts: tuple[int, int]) -> None:
        weighted = loss.detach().double() * len(labels)  # float64, as a Python sum was
        correct = (logits.detach().argmax(1) == labels).sum()
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct = correct if self.correct is None else self.correct + correct
        self.values["real"] += counts[0]
        self.values["synthetic"] += counts[1]
        self.values["batches"] += 1

    def global_sums(self, world: World, device) -> dict:
        local = dict(self.values)
        local["loss"] = 0.0 if self.loss_sum is None else float(self.loss_sum)
        local["correct"] = 0.0 if self.correct is None else float(self.correct)
        names = [*local, *SKIP_KINDS]
        summed = all_sum([*local.values(), *self.skipped.tolist()], world, device)
        return dict(zip(names, summed, strict=True))


def _composition(batch: dict, context: EpochContext, epoch: int) -> tuple[int, int]:
    n_syn = int(batch["is_synthetic"].sum())
    counts = (len(batch["is_synthetic"]) - n_syn, n_syn)
    if context.quota is not None and counts != tuple(context.quota):
        raise RuntimeError(
            f"epoch {epoch}, step {batch['step']}: rank {context.world.rank} got "
            f"{counts[0]} real + {counts[1]} synthetic samples, expected "
            f"{context.quota[0]} + {context.quota[1]}"
        )
    return counts


def _log_step(handle, batch: dict, counts, context: EpochContext, epoch: int) -> None:
    if handle is not None:
        line = {"epoch": epoch, "step": int(batch["step"]), "rank": context.world.rank}
        handle.write(json.dumps({**line, "real": counts[0], "synthetic": counts[1]}) + "\n")


def _step_log(context: EpochContext):
    if context.step_log is None:
        return None
    Path(context.step_log).mkdir(parents=True, exist_ok=True)
    return open(Path(context.step_log) / f"steps-rank{context.world.rank}.jsonl", "a")  # noqa: SIM115


def train_epoch(objective, loader, optimizer, schedule, epoch, steps, device, context=None) -> dict:
    """One epoch of ``objective`` (classifier + method, DDP-wrapped under torchrun) over
    ``loader``; returns the epoch's global log line."""
    context = context or EpochContext()
    world = context.world
    objective.train()
    totals, handle = _Totals(), _step_log(context)
    start = time.perf_counter()
    progress = tqdm(loader, total=steps, desc=f"epoch {epoch}", unit="batch", leave=False)
    for batch in progress if world.main else loader:
        counts = _composition(batch, context, epoch)
        if "skipped" in batch:
            totals.skipped += batch.pop("skipped")
        batch = _to_device(batch, device)
        loss, logits = objective(batch)
        if world.size > 1:  # DDP averages over ranks: weight this rank by its share
            loss_for_grad = loss * (sum(counts) * world.size / context.batch_size)
        else:
            loss_for_grad = loss
        optimizer.zero_grad(set_to_none=True)
        loss_for_grad.backward()
        optimizer.step()
        schedule.step()
        totals.add(loss, logits, batch["labels"], counts)
        _log_step(handle, batch, counts, context, epoch)
    if handle is not None:
        handle.close()
    if totals.values["batches"] != steps:
        done = int(totals.values["batches"])
        raise RuntimeError(f"epoch {epoch}: {done} batches, expected {steps}")
    seconds = all_max(time.perf_counter() - start, world, device)
    return _record(totals.global_sums(world, device), epoch, steps, seconds, schedule, world)


def _record(sums: dict, epoch: int, steps: int, seconds: float, schedule, world: World) -> dict:
    seen = sums["real"] + sums["synthetic"]
    record = {
        "epoch": epoch,
        "steps": steps,
        "loss": sums["loss"] / seen,
        "train_acc": sums["correct"] / seen,
        "real_seen": int(sums["real"]),
        "synthetic_seen": int(sums["synthetic"]),
        "effective_alpha": sums["real"] / seen,
        "images_per_s": seen / seconds,
        "lr": schedule.get_last_lr()[0],
    }
    skipped = {f"skipped_{kind}": int(sums[kind]) for kind in SKIP_KINDS}
    return {**record, **skipped, "ranks": world.size}
