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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sio.core.config import check_alpha
from sio.core.files import write_text_atomic
from sio.core.lock import hold_folder
from sio.core.seeding import derive_seed
from sio.core.storage import TransportError
from sio.shardset import Manifest, ShardError
from sio.train import distributed
from sio.train.accelerate import Acceleration, synchronize
from sio.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    check_same_run,
    header,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    set_rng_state,
)
from sio.train.checkpoint import save_atomic as _save_atomic
from sio.train.config import TrainConfig
from sio.train.distributed import World
from sio.train.loop import EpochTotals, StepContext, epoch_record, train_step
from sio.train.methods import METHODS, MethodContext, build_method
from sio.train.mixing import batch_counts, rank_share, steps_per_epoch
from sio.train.models import build_classifier
from sio.train.progress import TensorBoardLog, epoch_summary, final_summary
from sio.train.resident import ResidentBatches, load_resident
from sio.train.sources import ShardSource, extra_sources, synthetic_source
from sio.train.stream import Fetcher, MixedBatches, MixSpec, SharedEpoch
from sio.train.validation import ValidationSet

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "load_checkpoint", "train_classifier"]


class Objective(nn.Module):
    """The classifier and its training method, trained together by one optimiser."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: dict):
        return self.method.loss(self.model, batch)


@dataclass(frozen=True)
class TrainPlan:
    """Everything decided before step 0."""

    config: TrainConfig
    alpha: float
    seed: int
    out: Path
    device: str
    world: World
    sources: dict  # source name -> ShardSource (real, synthetic when used, the method's extras)
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
    real_source = ShardSource.open(real)
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
    optimizer, schedule = _optimiser(config, model, method)
    syn_manifest = sources["synthetic"].manifest if "synthetic" in sources else None
    record = header(manifest, config, alpha, seed, real, synthetic, world.size, syn_manifest)
    return plan, TrainState(model, method, optimizer, schedule, record)


def run(plan: TrainPlan, state: TrainState, resume: bool | None) -> Path:
    """Resume ``state`` from the run folder if asked, then train to the plan's last step."""
    path = plan.out / CHECKPOINT
    _resume(path, plan, state, resume)
    if state.step >= plan.total_steps:
        if plan.world.main:
            print(f"{plan.out}: the run is complete ({plan.epochs} epochs); nothing to do")
        return path
    _prepare_trace(plan, state.step)
    position = SharedEpoch(*divmod(state.step, plan.steps_per_epoch))
    loader = _loader(plan, state, position)
    acceleration = Acceleration.of(plan.config)
    model = acceleration.compiled(state.model)  # the same module: checkpoints stay plain
    objective = _wrap(Objective(model, state.method), plan.world, plan.device)
    context = StepContext(
        plan.world, plan.quota, plan.config.batch_size, plan.trace_file(), plan.device, acceleration
    )
    start = time.perf_counter()
    board = TensorBoardLog.open(plan.out, state.history) if plan.world.main else None
    try:
        with acceleration.backends(plan.device):
            while state.step < plan.total_steps:
                train_epoch(plan, state, objective, loader, position, context, board)
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
    progress = tqdm(  # numbered from 1, as the summary line is; a resumed epoch starts part-full
        loader,
        total=plan.steps_per_epoch,
        initial=first,
        desc=f"epoch {epoch + 1}/{plan.epochs}",
        unit="batch",
        leave=False,
    )
    for batch in progress if plan.world.main else loader:
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
        lines = "".join(json.dumps(record) + "\n" for record in state.history)
        write_text_atomic(plan.out / "log.jsonl", lines)
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


def _shares(total: int, world: World) -> tuple[int, ...]:
    return tuple(rank_share(total, rank, world.size) for rank in range(world.size))


def batch_plan(counts, extras: dict[str, int], batch_size: int, world: World) -> dict:
    """Samples per batch that each rank takes from each source: ``rank_share`` of the global
    real and synthetic quota; an extra source sized in whole batches (PixMix: one picture per
    ID image, OE: 2 x B outliers) follows each rank's ID part, any other is split by share."""
    plan = {"real": _shares(counts[0], world), "synthetic": _shares(counts[1], world)}
    local = [r + s for r, s in zip(plan["real"], plan["synthetic"], strict=True)]
    for name, count in extras.items():
        whole = count % batch_size == 0
        plan[name] = (
            tuple(count // batch_size * n for n in local) if whole else _shares(count, world)
        )
    return plan


def open_sources(real, synthetic, counts, config, method, alpha: float | None = None):
    """({source name: ShardSource} of the sources a batch draws from, {extra: count per
    batch}): the real set, the synthetic set when ``counts`` has synthetic samples, and the
    method's extra sets, each checked against the real one. ``real`` is a location or an
    opened ShardSource."""
    real_source = real if isinstance(real, ShardSource) else ShardSource.open(real)
    manifest = real_source.manifest
    sources = {"real": real_source}
    alpha = counts[0] / (counts[0] + counts[1]) if alpha is None else alpha
    syn_source = synthetic_source(manifest, synthetic, alpha, counts[1])
    if syn_source is not None:
        sources["synthetic"] = syn_source
    extras = extra_sources(manifest, method.inputs(config), method.sources())
    sources.update({name: source for name, source, _ in extras})
    return sources, {name: count for name, _, count in extras}


def batch_spec(real, synthetic, counts, seed, config, method, *, world=None) -> MixSpec:
    """This rank's stream definition: its share of the exact (n_real, n_syn) ``counts``, the
    recipe's augmentation, and the method's extra shard sets and batch transform."""
    world = world or World()
    sources, extras = open_sources(real, synthetic, counts, config, method)
    shares = batch_plan(counts, extras, config.batch_size, world)
    steps = config.steps_per_epoch or steps_per_epoch(
        sources["real"].manifest.num_samples, config.batch_size
    )
    return _spec(sources, shares, steps, seed, config, method, world)


def check_batch_memory(source: ShardSource, images: int) -> None:
    """A batch of ``images`` of the manifest's size must fit in a quarter of this machine's
    memory: a served manifest's ``image_size`` is never an allocation size before this check."""
    manifest = source.manifest
    height, width = manifest.image_size
    need = images * manifest.channels * height * width
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > memory // 4:
        raise ShardError(
            f"{source.location}: image_size {height}x{width} x {manifest.channels} channels makes "
            f"a batch of {images} images {need / 2**30:.1f} GiB, over a quarter of this "
            f"machine's {memory / 2**30:.1f} GiB (a manifest's size, or batch_size, too large)"
        )


def _spec(sources: dict, shares: dict, steps: int, seed, config, method, world) -> MixSpec:
    manifest = sources["real"].manifest
    check_batch_memory(sources["real"], sum(share[world.rank] for share in shares.values()))
    extras = [name for name in sources if name not in ("real", "synthetic")]
    return MixSpec(
        real_urls=sources["real"].urls,
        synthetic_urls=sources["synthetic"].urls if "synthetic" in sources else (),
        n_real=shares["real"][world.rank],
        n_syn=shares["synthetic"][world.rank],
        channels=manifest.channels,
        image_size=tuple(manifest.image_size),
        steps_per_epoch=steps,
        seed=seed,
        rank=world.rank,
        shuffle_window=config.shuffle_window,
        crop_padding=config.crop_padding,
        hflip=config.hflip,
        resized_crop=config.resized_crop,
        extras=tuple((name, sources[name].urls, shares[name][world.rank]) for name in extras),
        transform=method.transform(),
        encodings=tuple((name, source.encoding) for name, source in sources.items()),
        expected=tuple(pair for source in sources.values() for pair in source.expected),
        on_error=config.on_error,
        shares=tuple((name, tuple(shares[name])) for name in shares),
        hashes=tuple(
            (url, shard.sha256)
            for source in sources.values()
            for url, shard in zip(source.urls, source.manifest.shards, strict=True)
        ),
        num_classes=len(manifest.class_names),
        cache_dir=config.cache_dir,
        cache_limit=config.cache_limit,
        read_timeout=config.read_timeout,
        device_augment=config.device_augment,
    )


def _loader(plan: TrainPlan, state: TrainState, position: SharedEpoch):
    """The batches: DataLoader workers streaming shards, or resident sets in memory."""
    config = plan.config
    spec = _spec(
        plan.sources,
        plan.shares,
        plan.steps_per_epoch,
        plan.seed,
        config,
        state.method,
        plan.world,
    )
    if config.resident:
        fetcher = Fetcher(config.cache_dir, config.cache_limit, config.read_timeout)
        sets = {
            name: load_resident(source, plan.device, fetcher)
            for name, source in plan.sources.items()
        }
        return ResidentBatches(spec, position, sets, {name: plan.shares[name] for name in sets})
    return DataLoader(
        MixedBatches(spec, position),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=str(plan.device).startswith("cuda"),
    )


def _wrap(objective: Objective, world: World, device) -> nn.Module:
    if world.size == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    unused = bool(list(objective.method.parameters()))  # e.g. VOS's head before its queues fill
    return DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=unused)


def build_objective(config: TrainConfig, manifest: Manifest, seed: int, steps: int, device):
    """(classifier with the method's head, method), each initialised from its own derived seed
    without touching the global RNG state; ``steps`` is the number of steps per epoch."""
    method_class = METHODS.get(config.method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_classifier(
            config.model,
            in_channels=manifest.channels,
            num_classes=len(manifest.class_names),
            mean=manifest.pixel_mean,
            std=manifest.pixel_std,
            head=method_class.head,
            **method_class.head_options(config),
        )
    context = MethodContext(
        num_classes=len(manifest.class_names),
        feature_dim=model.backbone.feature_dim,
        seed=seed,
        steps_per_epoch=steps,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "method-init"))
        method = build_method(config, context)
    return Acceleration.of(config).prepare_model(model.to(device)), method.to(device)


def _optimiser(config: TrainConfig, model, method):
    groups = method.param_groups(model)
    own = list(method.parameters())
    if own:
        groups.append({"params": own})
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_factor())


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
