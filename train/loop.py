"""Training steps and the epoch's log line, the same for one process and for DDP ranks.

Under DDP every rank takes its own share of the global batch (``rank_share`` of the real and of
the synthetic quota); its mean loss is scaled by its share of the global batch times the number
of ranks, so DDP's gradient average is the gradient of the global batch's mean loss. The log's
sums (loss, correct, real and synthetic samples, bytes fetched) are all-reduced and the skipped
data's keys gathered and deduplicated, so the line describes the global batches; images/s is
the global count over the slowest rank's time. ``EpochTotals`` is checkpointed mid-epoch, so
an epoch resumed at step k logs the line the uninterrupted epoch would have.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sio.train.distributed import World, all_max, all_sum, gather
from sio.train.stream import SKIP_KINDS, raise_worker_error, skip_counts

SUMS = ("loss", "correct", "real", "synthetic", "batches", "fetched", "seconds")


@dataclass
class EpochTotals:
    """This rank's sums over the steps of the epoch so far (checkpointed with the run)."""

    sums: dict = field(default_factory=lambda: dict.fromkeys(SUMS, 0.0))
    skipped: set = field(default_factory=set)
    loss_sum: torch.Tensor | None = None  # device tensors: no sync per step
    correct: torch.Tensor | None = None

    def add(self, loss, logits, labels, counts, batch: dict, main: bool = True) -> None:
        weighted = loss.detach().double() * len(labels)  # float64, as a Python sum was
        correct = (logits.detach().argmax(1) == labels).sum()
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct = correct if self.correct is None else self.correct + correct
        self.sums["real"] += counts[0]
        self.sums["synthetic"] += counts[1]
        self.sums["batches"] += int(main)  # global steps: counted once, by rank 0
        self.sums["fetched"] += batch.get("fetched", 0)
        self.skipped |= {tuple(f) for f in batch.get("faults", ())}

    def local(self) -> dict:
        sums = dict(self.sums)
        sums["loss"] += 0.0 if self.loss_sum is None else float(self.loss_sum)
        sums["correct"] += 0.0 if self.correct is None else float(self.correct)
        return sums

    def state(self) -> dict:
        return {"sums": self.local(), "skipped": sorted(self.skipped)}

    @classmethod
    def restore(cls, states: list[dict], world: World) -> EpochTotals:
        """This rank's totals from the checkpointed ones of every rank: the same rank's with
        the same world size, else their sum on rank 0 (the sums are additive)."""
        totals = cls()
        if not states:
            return totals
        mine = [states[world.rank]] if len(states) == world.size else states
        if len(states) != world.size and not world.main:
            mine = []
        for state in mine:
            for key in SUMS:
                totals.sums[key] += state["sums"][key]
            totals.skipped |= {tuple(k) for k in state["skipped"]}
        # the float64 loss sum goes on as the tensor it was: the same additions, the same bits
        totals.loss_sum = torch.tensor(totals.sums.pop("loss"), dtype=torch.float64)
        totals.correct = torch.tensor(int(totals.sums.pop("correct")), dtype=torch.int64)
        totals.sums.update(loss=0.0, correct=0.0)
        return totals


@dataclass(frozen=True)
class StepContext:
    """What a step checks and writes beyond the objective: this rank's exact (real,
    synthetic) ``quota`` per batch, the global batch size, the device and the trace file."""

    world: World = World()
    quota: tuple[int, int] | None = None
    batch_size: int | None = None
    trace: Path | None = None
    device: str = "cpu"


@dataclass
class Steps:
    """What a training step changes: the optimizer, its schedule and the epoch's sums (the
    trainer's TrainState has these, and more)."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    totals: EpochTotals = field(default_factory=EpochTotals)


def _to_device(batch: dict, device) -> dict:
    non_blocking = str(device).startswith("cuda")
    return {
        k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        for k, v in batch.items()
    }


def composition(batch: dict, context: StepContext) -> tuple[int, int]:
    n_syn = int(batch["is_synthetic"].sum())
    counts = (len(batch["is_synthetic"]) - n_syn, n_syn)
    if context.quota is not None and counts != tuple(context.quota):
        raise RuntimeError(
            f"step {batch['step']}: rank {context.world.rank} got {counts[0]} real + "
            f"{counts[1]} synthetic samples, expected {context.quota[0]} + {context.quota[1]}"
        )
    return counts


def train_step(objective, batch: dict, state, context: StepContext) -> None:
    """One optimiser step of ``objective`` (classifier + method, DDP-wrapped under torchrun);
    ``state`` has the ``optimizer``, ``schedule`` and epoch ``totals`` (Steps, TrainState)."""
    if "error" in batch:
        raise_worker_error(batch)
    counts = composition(batch, context)
    world = context.world
    if context.trace is not None:
        line = {"step": int(batch["step"]), **batch["ids"]}
        with open(context.trace, "a") as handle:
            handle.write(json.dumps(line) + "\n")
    bookkeeping = {k: batch.pop(k) for k in ("faults", "fetched", "ids", "keys") if k in batch}
    batch = _to_device(batch, context.device)
    loss, logits = objective(batch)
    if world.size > 1:  # DDP averages over ranks: weight this rank by its share
        loss_for_grad = loss * (sum(counts) * world.size / context.batch_size)
    else:
        loss_for_grad = loss
    state.optimizer.zero_grad(set_to_none=True)
    loss_for_grad.backward()
    state.optimizer.step()
    state.schedule.step()
    state.totals.add(loss, logits, batch["labels"], counts, bookkeeping, world.main)


def epoch_record(state, context: StepContext, epoch: int, steps: int, seconds: float) -> dict:
    """The epoch's global log line from this rank's ``state.totals`` (all ranks call it)."""
    world, device = context.world, context.device
    local = state.totals.local()
    local["seconds"] += seconds
    names = [k for k in SUMS if k != "seconds"]
    summed = dict(zip(names, all_sum([local[k] for k in names], world, device), strict=True))
    seconds = all_max(local["seconds"], world, device)
    gathered = gather(sorted(state.totals.skipped), world)
    skipped = {tuple(key) for keys in gathered for key in keys}
    if int(summed["batches"]) != steps:
        raise RuntimeError(f"epoch {epoch}: {int(summed['batches'])} batches, expected {steps}")
    seen = summed["real"] + summed["synthetic"]
    record = {
        "epoch": epoch,
        "steps": steps,
        "loss": summed["loss"] / seen,
        "train_acc": summed["correct"] / seen,
        "real_seen": int(summed["real"]),
        "synthetic_seen": int(summed["synthetic"]),
        "effective_alpha": summed["real"] / seen,
        "images_per_s": seen / max(seconds, 1e-9),
        "lr": state.schedule.get_last_lr()[0],
    }
    counts = skip_counts(skipped)
    record.update({f"skipped_{kind}": counts[kind] for kind in SKIP_KINDS})
    return {**record, "bytes_fetched": int(summed["fetched"]), "ranks": world.size}


def train_epoch(objective, loader, state: Steps, context: StepContext, epoch: int, steps: int):
    """One whole epoch over ``loader`` from fresh sums; returns its global log line."""
    objective.train()
    state.totals, start = EpochTotals(), time.perf_counter()
    for batch in loader:
        train_step(objective, batch, state, context)
    return epoch_record(state, context, epoch, steps, time.perf_counter() - start)
