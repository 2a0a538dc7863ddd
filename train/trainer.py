"""The streaming SIO trainer: exact real/synthetic batches, SGD + Nesterov, per-step cosine.

``alpha = 1`` is the real-only baseline with the same batch size and step count. The training
method (``config.method``, see methods/) supplies the loss, and possibly a batch transform,
extra shard sets outside the ID part, its classifier head, parameter groups and the schedule; it
never changes the batch's real/synthetic composition. Under torchrun each rank takes its
``rank_share`` of the global real and synthetic quota (see loop.py and distributed.py). Shard
sets are streamed from folders or URLs (stream.py) or, with ``resident``, held in memory
(resident.py). A checkpoint (``checkpoint.pt``, see checkpoint.py) is written atomically after
every epoch by rank 0, and ``log.jsonl`` has one global line per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from sio.core.config import check_alpha
from sio.core.files import write_text_atomic
from sio.core.seeding import derive_seed
from sio.shardset import Manifest
from sio.train import distributed
from sio.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    check_same_run,
    header,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from sio.train.checkpoint import save_atomic as _save_atomic
from sio.train.config import TrainConfig
from sio.train.distributed import World
from sio.train.loop import EpochContext
from sio.train.loop import train_epoch as _train_epoch
from sio.train.methods import METHODS, MethodContext, build_method
from sio.train.mixing import batch_counts, rank_share, steps_per_epoch
from sio.train.models import build_classifier
from sio.train.resident import ResidentBatches, load_resident
from sio.train.sources import ShardSource, check_shard_count, extra_sources, synthetic_source
from sio.train.stream import MixedBatches, MixSpec, SharedEpoch

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "load_checkpoint", "train_classifier"]


class Objective(nn.Module):
    """The classifier and its training method, trained together by one optimiser."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: dict):
        return self.method.loss(self.model, batch)


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
) -> Path:
    """Train one classifier into the folder ``out``; returns its checkpoint's path.

    ``real`` and ``synthetic`` are shard-set folders or ``s3://``/``http(s)://`` prefixes.
    ``resume``: None (``sio run``) continues an unfinished checkpoint in ``out`` and leaves a
    finished one as it is; True (``sio train --resume``) the same, asked for; False refuses a
    folder that already holds a checkpoint. Launched by torchrun, this runs as one DDP rank."""
    check_alpha(alpha)
    world, device = distributed.start(device)
    try:
        path = _train(real, synthetic, alpha, seed, config, Path(out), device, resume, world)
    except BaseException:
        if world.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # no barrier: the other ranks may be gone
        raise
    distributed.stop(world)
    return path


def _train(real, synthetic, alpha, seed, config, out, device, resume, world: World) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    real_source = ShardSource.open(real)
    manifest = real_source.manifest
    counts = batch_counts(config.batch_size, alpha)
    steps = config.steps_per_epoch or steps_per_epoch(manifest.num_samples, config.batch_size)
    model, method = build_objective(config, manifest, seed, steps, device)
    sources, extras = open_sources(real_source, synthetic, counts, config, method, alpha)
    optimizer, schedule = _optimiser(config, model, method)
    state = header(manifest, config, alpha, seed, real, synthetic, world.size)
    path = out / CHECKPOINT
    start = _resume(path, state, (model, method, optimizer, schedule), device, resume, world)
    epochs = method.total_epochs()
    if start >= epochs:
        if world.main:
            print(f"{out}: the run is complete ({epochs} epochs); nothing to do", flush=True)
        return path
    plan = batch_plan(counts, extras, config.batch_size, world)
    spec = _spec(sources, extras, plan, seed, config, method, world)
    epoch_value = SharedEpoch(start)
    loader = _loader(spec, epoch_value, config, sources, plan, device)
    objective = _wrap(Objective(model, method), world, device)
    context = EpochContext.create(world, (spec.n_real, spec.n_syn), config.batch_size)
    for epoch in range(start, epochs):
        epoch_value.set(epoch)
        record = _train_epoch(objective, loader, optimizer, schedule, epoch, steps, device, context)
        state["history"].append(record)
        state.update(epoch=epoch + 1, step=(epoch + 1) * steps, complete=epoch + 1 == epochs)
        _save_epoch(state, (model, method, optimizer, schedule), out, world)
    return path


def _save_epoch(state: dict, objects, out: Path, world: World) -> None:
    """Rank 0 writes the checkpoint (with every rank's RNG states), then the log rebuilt from the
    checkpoint's history: after a crash and a resume it holds each epoch exactly once."""
    model, method, optimizer, schedule = objects
    rngs = distributed.gather(rng_state(), world)
    if world.main:
        state.update(
            model_state=model.state_dict(),
            method_state=method.state_dict(),
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
            rng=rngs,
        )
        _save_atomic(state, out / CHECKPOINT)
        lines = "".join(json.dumps(record) + "\n" for record in state["history"])
        write_text_atomic(out / "log.jsonl", lines)
    distributed.barrier(world)


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
    plan = batch_plan(counts, extras, config.batch_size, world)
    return _spec(sources, extras, plan, seed, config, method, world)


def _spec(sources: dict, extras: dict, plan: dict, seed, config, method, world) -> MixSpec:
    manifest = sources["real"].manifest
    if not config.resident:
        for name, source in sources.items():
            check_shard_count(name, source, world.size, config.num_workers)
    return MixSpec(
        real_urls=sources["real"].urls,
        synthetic_urls=sources["synthetic"].urls if "synthetic" in sources else (),
        n_real=plan["real"][world.rank],
        n_syn=plan["synthetic"][world.rank],
        channels=manifest.channels,
        image_size=tuple(manifest.image_size),
        steps_per_epoch=config.steps_per_epoch
        or steps_per_epoch(manifest.num_samples, config.batch_size),
        seed=seed,
        rank=world.rank,
        shuffle_buffer=config.shuffle_buffer,
        crop_padding=config.crop_padding,
        hflip=config.hflip,
        resized_crop=config.resized_crop,
        extras=tuple((name, sources[name].urls, plan[name][world.rank]) for name in extras),
        transform=method.transform(),
        encodings=tuple((name, source.encoding) for name, source in sources.items()),
        expected=tuple(pair for source in sources.values() for pair in source.expected),
        on_error=config.on_error,
    )


def _loader(spec: MixSpec, epoch: SharedEpoch, config, sources, plan, device):
    """The epoch's batches: DataLoader workers streaming shards, or resident sets in memory."""
    if config.resident:
        sets = {name: load_resident(source, device) for name, source in sources.items()}
        return ResidentBatches(spec, epoch, sets, {name: plan[name] for name in sets})
    return DataLoader(
        MixedBatches(spec, epoch),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=str(device).startswith("cuda"),
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
    return model.to(device), method.to(device)


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


def _resume(path: Path, state: dict, objects, device, resume, world: World) -> int:
    """Load an earlier checkpoint of the same run into the objects; returns its epoch."""
    if not path.is_file():
        return 0
    previous = torch.load(path, map_location=device, weights_only=True)
    if resume is False:
        done = (
            f"a finished run ({previous['epoch']} epochs)"
            if previous.get("complete")
            else (f"a checkpoint after epoch {previous['epoch']}")
        )
        raise ValueError(
            f"{path.parent} holds {done}; nothing was overwritten. Pass --resume to continue "
            "it, or choose another --out"
        )
    check_same_run(path, previous, state)
    model, method, optimizer, schedule = objects
    model.load_state_dict(previous["model_state"])
    method.load_state_dict(previous.get("method_state", {}))
    optimizer.load_state_dict(previous["optimizer"])
    schedule.load_state_dict(previous["schedule"])
    rngs = previous.get("rng") or []
    if len(rngs) == world.size:
        set_rng_state(rngs[world.rank])
    state["history"] = list(previous["history"])
    return previous["epoch"]
