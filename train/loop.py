"""Training steps and the epoch's log line, the same for one process and for DDP ranks.

Under DDP every rank takes its own share of the global batch (``rank_share`` of the real and of
the synthetic quota); its mean loss is scaled by its share of the global batch times the number
of ranks, so DDP's gradient average is the gradient of the global batch's mean loss. The log's
sums (loss, correct, real and synthetic samples, bytes fetched, shards read, decoded and mapped
from the node's decoded cache: ``shard_reads``, ``shard_decodes``, ``shard_cached``) are
all-reduced and the skipped data's keys gathered and deduplicated, so the line describes the
global batches; images/s is the global count over the slowest rank's time. ``EpochTotals`` is
checkpointed mid-epoch, so an epoch resumed at step k logs the line the uninterrupted epoch
would have (the shard counters aside: they describe what the node did).

The line also splits the epoch by the batches' ``is_synthetic``: ``real_loss`` and
``synthetic_loss`` are the mean per-sample cross-entropy of the logits the method returns
against the batch's labels on each part (a method's own loss need not split per sample: label
smoothing, CutMix's mixed targets, OE's outlier term; ``loss`` stays the method's), and
``real_acc`` / ``synthetic_acc`` the top-1 accuracy on each part; null for a part the epoch
had none of.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sio.train.accelerate import Acceleration
from sio.train.distributed import World, all_max, all_sum, gather
from sio.train.stream import SKIP_KINDS, skip_counts

# the shard counters of a batch (rowcache.Counts): summed over steps, workers and ranks
SHARD_COUNTS = ("shard_reads", "shard_decodes", "shard_cached")
SUMS = ("loss", "correct", "real", "synthetic", "batches", "fetched", *SHARD_COUNTS, "seconds")
# per part of the batch: summed per-sample cross-entropy and correct predictions (float64)
SPLIT = ("real_loss", "real_correct", "synthetic_loss", "synthetic_correct")


def split_sums(logits, labels, is_synthetic) -> torch.Tensor:
    """float64 [real CE sum, real correct, synthetic CE sum, synthetic correct] of one batch,
    on the logits' device (no host sync)."""
    logits = logits.detach().float()
    parts = torch.stack(
        [
            F.cross_entropy(logits, labels, reduction="none").double(),
            (logits.argmax(1) == labels).double(),
        ]
    )
    synthetic = is_synthetic.to(logits.device).bool()
    masks = torch.stack([~synthetic, synthetic])  # real, synthetic
    return torch.where(masks[:, None, :], parts[None], 0.0).sum(-1).flatten()


@dataclass
class EpochTotals:
    """This rank's sums over the steps of the epoch so far (checkpointed with the run)."""

    sums: dict = field(default_factory=lambda: dict.fromkeys(SUMS, 0.0))
    skipped: set = field(default_factory=set)
    loss_sum: torch.Tensor | None = None  # device tensors: no sync per step
    correct: torch.Tensor | None = None
    split: torch.Tensor | None = None  # float64, the SPLIT sums
    split_missing: bool = False  # resumed from a checkpoint written before the split was logged

    def add(
        self, loss, logits, labels, counts, batch: dict, main: bool = True, is_synthetic=None
    ) -> None:
        weighted = loss.detach().double() * len(labels)  # float64, as a Python sum was
        correct = (logits.detach().argmax(1) == labels).sum()
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct = correct if self.correct is None else self.correct + correct
        if is_synthetic is not None:
            part = split_sums(logits, labels, is_synthetic)
            if self.split is not None and self.split.device != part.device:
                self.split = self.split.to(part.device)  # restored on the CPU
            self.split = part if self.split is None else self.split + part
        self.sums["real"] += counts[0]
        self.sums["synthetic"] += counts[1]
        self.sums["batches"] += int(main)  # global steps: counted once, by rank 0
        for key in ("fetched", *SHARD_COUNTS):
            self.sums[key] += batch.get(key, 0)
        self.skipped |= {tuple(f) for f in batch.get("faults", ())}

    def local(self) -> dict:
        sums = dict(self.sums)
        sums["loss"] += 0.0 if self.loss_sum is None else float(self.loss_sum)
        sums["correct"] += 0.0 if self.correct is None else float(self.correct)
        if not self.split_missing:
            split = [0.0] * len(SPLIT) if self.split is None else self.split.tolist()
            sums.update(zip(SPLIT, split, strict=True))
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
        split = [0.0] * len(SPLIT)
        for state in mine:
            for key in SUMS:
                totals.sums[key] += state["sums"].get(key, 0.0)  # counters added later: 0
            totals.skipped |= {tuple(k) for k in state["skipped"]}
            totals.split_missing |= any(key not in state["sums"] for key in SPLIT)
            split = [a + state["sums"].get(key, 0.0) for a, key in zip(split, SPLIT, strict=True)]
        # the float64 loss sum goes on as the tensor it was: the same additions, the same bits
        totals.loss_sum = torch.tensor(totals.sums.pop("loss"), dtype=torch.float64)
        totals.correct = torch.tensor(int(totals.sums.pop("correct")), dtype=torch.int64)
        totals.sums.update(loss=0.0, correct=0.0)
        # a split of one rank goes on as it was; the ranks' sums add up on rank 0 otherwise
        totals.split = torch.tensor(split, dtype=torch.float64)
        return totals


@dataclass(frozen=True)
class StepContext:
    """What a step checks and writes beyond the objective: this rank's exact (real,
    synthetic) ``quota`` per batch, the global batch size, the device, the trace file and the
    run's GPU options (accelerate.py: autocast, memory order, the deferred crop/flip)."""

    world: World = World()
    quota: tuple[int, int] | None = None
    batch_size: int | None = None
    trace: Path | None = None
    device: str = "cpu"
    acceleration: Acceleration = Acceleration()


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
    counts = composition(batch, context)
    world = context.world
    if context.trace is not None:
        line = {"step": int(batch["step"]), **batch["ids"]}
        with open(context.trace, "a") as handle:
            handle.write(json.dumps(line) + "\n")
    kept = ("faults", "fetched", "ids", "keys", *SHARD_COUNTS)
    bookkeeping = {k: batch.pop(k) for k in kept if k in batch}
    batch = context.acceleration.batch(_to_device(batch, context.device))
    with context.acceleration.autocast(context.device):
        loss, logits = objective(batch)
    if world.size > 1:  # DDP averages over ranks: weight this rank by its share
        loss_for_grad = loss * (sum(counts) * world.size / context.batch_size)
    else:
        loss_for_grad = loss
    state.optimizer.zero_grad(set_to_none=True)
    loss_for_grad.backward()
    state.optimizer.step()
    state.schedule.step()
    state.totals.add(
        loss, logits, batch["labels"], counts, bookkeeping, world.main, batch["is_synthetic"]
    )


def _part(summed: dict, part: str) -> tuple[float | None, float | None]:
    """(mean cross-entropy, accuracy) of the epoch's real or synthetic samples, or Nones."""
    count = summed[part]
    if not count or summed["split_missing"]:
        return None, None
    return summed[f"{part}_loss"] / count, summed[f"{part}_correct"] / count


def epoch_record(
    state,
    context: StepContext,
    epoch: int,
    steps: int,
    seconds: float,
    val_acc: float | None = None,
) -> dict:
    """The epoch's global log line from this rank's ``state.totals`` (all ranks call it);
    ``val_acc``: the ID validation accuracy after the epoch (rank 0's), if measured."""
    world, device = context.world, context.device
    local = state.totals.local()
    local["seconds"] += seconds
    local["split_missing"] = float(state.totals.split_missing)
    local.update({key: local.get(key, 0.0) for key in SPLIT})
    names = [k for k in SUMS if k != "seconds"] + [*SPLIT, "split_missing"]
    summed = dict(zip(names, all_sum([local[k] for k in names], world, device), strict=True))
    seconds = all_max(local["seconds"], world, device)
    gathered = gather(sorted(state.totals.skipped), world)
    skipped = {tuple(key) for keys in gathered for key in keys}
    if int(summed["batches"]) != steps:
        raise RuntimeError(f"epoch {epoch}: {int(summed['batches'])} batches, expected {steps}")
    seen = summed["real"] + summed["synthetic"]
    real_loss, real_acc = _part(summed, "real")
    synthetic_loss, synthetic_acc = _part(summed, "synthetic")
    record = {
        "epoch": epoch,
        "steps": steps,
        "loss": summed["loss"] / seen,
        "train_acc": summed["correct"] / seen,
        "real_loss": real_loss,
        "real_acc": real_acc,
        "synthetic_loss": synthetic_loss,
        "synthetic_acc": synthetic_acc,
        "val_acc": val_acc,
        "real_seen": int(summed["real"]),
        "synthetic_seen": int(summed["synthetic"]),
        "effective_alpha": summed["real"] / seen,
        "images_per_s": seen / max(seconds, 1e-9),
        "lr": state.schedule.get_last_lr()[0],
    }
    counts = skip_counts(skipped)
    record.update({f"skipped_{kind}": counts[kind] for kind in SKIP_KINDS})
    shards = {key: int(summed[key]) for key in SHARD_COUNTS}
    return {**record, "bytes_fetched": int(summed["fetched"]), **shards, "ranks": world.size}


def train_epoch(objective, loader, state: Steps, context: StepContext, epoch: int, steps: int):
    """One whole epoch over ``loader`` from fresh sums; returns its global log line."""
    objective.train()
    state.totals, start = EpochTotals(), time.perf_counter()
    for batch in loader:
        train_step(objective, batch, state, context)
    return epoch_record(state, context, epoch, steps, time.perf_counter() - start)
