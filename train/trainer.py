"""The streaming SIO trainer: exact real/synthetic batches, SGD + Nesterov, per-step cosine.

A run is a ``TrainPlan`` (everything decided before step 0: the shard sets, the samples per
batch of each rank and source, steps per epoch, epochs, the checkpoint cadence) and a
``TrainState`` (what changes and is checkpointed: the step, model, method, optimizer, schedule,
RNG states, the epoch's sums so far and the log's history). The batches are a function of
(seed, step) alone (stream.py), so the position in the data is just ``state.step``.

``alpha = 1`` is the real-only baseline with the same batch size and step count. The training
method (``config.method``, see methods/) supplies the loss, and possibly a batch transform, extra
shard sets outside the ID part, its classifier head, parameter groups and the schedule; it never
changes the batch's real/synthetic composition. Under torchrun each rank takes its
``rank_share`` of the global real and synthetic quota. Shard sets are streamed from folders or
URLs (stream.py) or, with ``resident``, held in memory (resident.py). Rank 0 writes
``checkpoint.pt`` atomically after every epoch and every ``checkpoint_every`` steps, and
``log.jsonl`` (one global line per epoch); ``trace: true`` writes ``trace/rank-R.jsonl``.
With a ``val`` set rank 0 also measures the ID validation accuracy after each epoch
(validation.py: eval mode, no effect on the weights or batches); rank 0 prints a one-line summary
per epoch and a final line, and writes TensorBoard event files to ``tb/`` (progress.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sio.core.config import check_alpha
from sio.core.files import write_text_atomic
from sio.core.lock import hold_folder
from sio.core.progress import progress
from sio.core.resumable import rng_state, set_rng_state, write_log
from sio.core.resumable import save_checkpoint as _save_atomic
from sio.core.storage import TransportError
from sio.shardset import ShardError
from sio.train import distributed
from sio.train.accelerate import Acceleration, synchronize
from sio.train.batches import batch_plan, batch_spec, loader, open_sources
from sio.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    check_same_run,
    header,
    load_checkpoint,
    read_checkpoint,
)
from sio.train.config import TrainConfig
from sio.train.distributed import World
from sio.train.loop import EpochTotals, StepContext, epoch_record, train_step
from sio.train.mixing import batch_counts, steps_per_epoch
from sio.train.objective import Objective, build_objective, optimiser, wrap
from sio.train.progress import TensorBoardLog, epoch_label, epoch_summary, final_summary
from sio.train.sources import LocatedSet
from sio.train.stream import SharedEpoch
from sio.train.validation import ValidationSet

__all__ = [  # the trainer's parts that tests and benchmarks use, wherever they live
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "Objective",
    "batch_plan",
    "batch_spec",
    "build_objective",
    "load_checkpoint",
    "train_classifier",
]


@dataclass(frozen=True)
class TrainPlan:
    """Everything decided before step 0."""

    config: TrainConfig
    alpha: float
    seed: int
    out: Path
    device: str
    world: World
    sources: dict  # source name -> LocatedSet (real, synthetic when used, the method's extras)
    counts: tuple[int, int]  # the global batch's (real, synthetic) samples
    shares: dict  # source name -> samples per batch of each rank
    steps_per_epoch: int
    epochs: int
    locations: tuple  # (real, synthetic) as given, for the checkpoint
    validation: ValidationSet | None = None  # the ID val set measured after each epoch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def quota(self) -> tuple[int, int]:
        """This rank's (real, synthetic) samples per batch."""
        rank = self.world.rank
        return self.shares["real"][rank], self.shares["synthetic"][rank]

    def checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every
        return step % self.steps_per_epoch == 0 or bool(every and step % every == 0)

    def trace_file(self) -> Path | None:
        if not self.config.trace:
            return None
        return self.out / "trace" / f"rank-{self.world.rank}.jsonl"


@dataclass
class TrainState:
    """What changes during training and is checkpointed."""

    model: nn.Module
    method: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    record: dict  # the checkpoint's header and history
    step: int = 0  # optimiser steps done: the next batch is the one of global step ``step``
    totals: EpochTotals = field(default_factory=EpochTotals)

    @property
    def history(self) -> list:
        return self.record["history"]


def train_classifier(
    *,
    real: str | Path,
    synthetic: str | Path | None,
    alpha: float,
    seed: int,
    config: TrainConfig,
    out: str | Path,
    device: str = "cpu",
    resume: bool | None = None,
    val: str | Path | None = None,
) -> Path:
    """Train one classifier into the folder ``out``; returns its checkpoint's path.

    ``real`` and ``synthetic`` are shard-set folders or ``s3://``/``http(s)://`` prefixes;
    ``val`` (optional, the same) is the ID validation set whose accuracy each epoch logs.
    ``resume``: None (``sio run``) continues an unfinished checkpoint in ``out`` and leaves a
    finished one as it is; True (``sio train --resume``) the same, asked for; False refuses a
    folder that already holds a checkpoint. Launched by torchrun, this runs as one DDP rank.
    Another job writing ``out`` (another ``sio train --out``) is refused (``FolderBusy``)."""
    check_alpha(alpha)
    world, device = distributed.start(device)
    try:
        with hold_folder(out):  # one run writes a folder (its ranks together)
            plan, state = make_plan(
                real, synthetic, alpha, seed, config, Path(out), device, world, val=val
            )
            path = run(plan, state, resume)
    except BaseException:
        if world.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # no barrier: the other ranks may be gone
        raise
    distributed.stop(world)
    return path


def make_plan(real, synthetic, alpha, seed, config, out: Path, device, world: World, val=None):
    """(TrainPlan, the TrainState of step 0) of a run."""
    out.mkdir(parents=True, exist_ok=True)
    real_source = LocatedSet.open(real)
    manifest = real_source.manifest
    counts = batch_counts(config.batch_size, alpha)
    steps = config.steps_per_epoch or steps_per_epoch(manifest.num_samples, config.batch_size)
    model, method = build_objective(config, manifest, seed, steps, device)
    Acceleration.of(config).check_method(method)
    sources, extras = open_sources(real_source, synthetic, counts, config, method, alpha)
    plan = TrainPlan(
        config=config,
        alpha=alpha,
        seed=seed,
        out=out,
        device=device,
        world=world,
        sources=sources,
        counts=counts,
        shares=batch_plan(counts, extras, config.batch_size, world),
        steps_per_epoch=steps,
        epochs=method.total_epochs(),
        locations=(real, synthetic),
        validation=None if val is None else ValidationSet(val, manifest, config.batch_size),
    )
    optimizer, schedule = optimiser(config, model, method)
    syn_manifest = sources["synthetic"].manifest if "synthetic" in sources else None
    record = header(manifest, config, alpha, seed, real, synthetic, world.size, syn_manifest)
    return plan, TrainState(model, method, optimizer, schedule, record)


def run(plan: TrainPlan, state: TrainState, resume: bool | None) -> Path:
    """Resume ``state`` from the run folder if asked, then train to the plan's last step."""
    path = plan.out / CHECKPOINT
    _resume(path, plan, state, resume)
    if state.step >= plan.total_steps:
        if plan.world.main:
            print(f"{plan.out}: complete ({plan.epochs} epochs), nothing to do; checkpoint {path}")
        return path
    _prepare_trace(plan, state.step)
    position = SharedEpoch(*divmod(state.step, plan.steps_per_epoch))
    batches = loader(plan, state.method, position)
    acceleration = Acceleration.of(plan.config)
    model = acceleration.compiled(state.model)  # the same module: checkpoints stay plain
    objective = wrap(Objective(model, state.method), plan.world, plan.device)
    context = StepContext(
        plan.world, plan.quota, plan.config.batch_size, plan.trace_file(), plan.device, acceleration
    )
    start = time.perf_counter()
    board = TensorBoardLog.open(plan.out, state.history, plan) if plan.world.main else None
    try:
        with acceleration.backends(plan.device):
            while state.step < plan.total_steps:
                train_epoch(plan, state, objective, batches, position, context, board)
    except (ShardError, TransportError) as error:
        _log_error(plan, error)
        raise
    finally:
        if board is not None:
            board.close()
    if plan.world.main:
        print(final_summary(state.history, path, time.perf_counter() - start), flush=True)
    return path


def _log_error(plan: TrainPlan, error: BaseException) -> None:
    """The full traceback of a data error (a worker's own, when it came from one) goes to
    ``errors.log`` in the run folder; the user sees the message (``--debug``: both)."""
    import traceback

    trace = getattr(error, "worker_traceback", "") or "".join(traceback.format_exception(error))
    path = plan.out / f"errors-rank-{plan.world.rank}.log"
    before = path.read_text() if path.is_file() else ""
    write_text_atomic(path, f"{before}{trace}\n")


def train_epoch(
    plan: TrainPlan, state: TrainState, objective, loader, position, context, board=None
):
    """The rest of the epoch that ``state.step`` is in, checkpointed as the plan says; then
    (rank 0) its validation accuracy, summary line and TensorBoard scalars (``board``)."""
    epoch, first = divmod(state.step, plan.steps_per_epoch)
    position.set(epoch, first)
    objective.train()
    start = time.perf_counter()
    bar = progress(  # epochs from 0, as log.jsonl; a resumed epoch starts part-full
        loader,
        total=plan.steps_per_epoch,
        initial=first,
        desc=epoch_label(epoch, plan.epochs),
        unit="batch",
        disable=not plan.world.main,
    )
    for batch in bar:
        train_step(objective, batch, state, context)
        state.step += 1
        if state.step % plan.steps_per_epoch and plan.checkpoint_due(state.step):
            synchronize(plan.device)  # the clock counts the queued steps
            state.totals.sums["seconds"] += time.perf_counter() - start
            _save(plan, state)
            start = time.perf_counter()
    synchronize(plan.device)
    seconds = time.perf_counter() - start
    val_acc = None
    if plan.validation is not None and plan.world.main:
        val_acc = plan.validation.accuracy(state.model, plan.device)
    record = epoch_record(state, context, epoch, plan.steps_per_epoch, seconds, val_acc)
    state.history.append(record)
    state.totals = EpochTotals()
    _save(plan, state)
    if plan.world.main:
        print(epoch_summary(record, plan.epochs), flush=True)
        if board is not None:
            board.write(record)


def _save(plan: TrainPlan, state: TrainState) -> None:
    """Rank 0 writes the checkpoint (with every rank's RNG states and epoch sums so far), then
    the log rebuilt from the checkpoint's history: after a crash and a resume it holds each
    epoch exactly once."""
    world = plan.world
    rngs = distributed.gather(rng_state(), world)
    totals = distributed.gather(state.totals.state(), world)
    if world.main:
        epoch, within = divmod(state.step, plan.steps_per_epoch)
        state.record.update(
            epoch=epoch,
            step=state.step,
            complete=state.step == plan.total_steps,
            model_state=state.model.state_dict(),
            method_state=state.method.state_dict(),
            optimizer=state.optimizer.state_dict(),
            schedule=state.schedule.state_dict(),
            rng=rngs,
            epoch_totals=totals if within else [],
            world_size=world.size,
        )
        _save_atomic(state.record, plan.out / CHECKPOINT)
        write_log(plan.out, state.history)
    distributed.barrier(world)


def _prepare_trace(plan: TrainPlan, step: int) -> None:
    """Keep the trace lines of the steps before ``step`` (a killed run may have written more);
    rank 0 also cuts the files of ranks a resumed run with fewer ranks no longer has."""
    trace = plan.trace_file()
    if trace is None:
        return
    trace.parent.mkdir(parents=True, exist_ok=True)
    files = [trace]
    if plan.world.main:
        others = trace.parent.glob("rank-*.jsonl")
        files += [f for f in others if int(f.stem.split("-")[1]) >= plan.world.size]
    for path in files:
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in lines if line and json.loads(line)["step"] < step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def _resume(path: Path, plan: TrainPlan, state: TrainState, resume) -> None:
    """Load an earlier checkpoint of the same run into ``state`` (any number of ranks)."""
    if not path.is_file():
        return
    previous = read_checkpoint(path, plan.device)
    if resume is False:
        done = (
            f"a finished run ({previous['epoch']} epochs)"
            if previous.get("complete")
            else (f"a checkpoint after step {previous['step']}")
        )
        raise ValueError(
            f"{path.parent} holds {done}; nothing was overwritten. Pass --resume to continue "
            "it, or choose another --out"
        )
    check_same_run(path, previous, state.record)
    state.model.load_state_dict(previous["model_state"])
    state.method.load_state_dict(previous.get("method_state", {}))
    state.optimizer.load_state_dict(previous["optimizer"])
    state.schedule.load_state_dict(previous["schedule"])
    rngs = previous.get("rng") or []
    if len(rngs) == plan.world.size:
        set_rng_state(rngs[plan.world.rank])
    state.record["history"] = list(previous["history"])
    state.step = int(previous["step"])
    state.totals = EpochTotals.restore(previous.get("epoch_totals") or [], plan.world)
