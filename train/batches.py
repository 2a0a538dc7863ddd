"""What a run's batches are made of: the sources each batch draws from, the samples each rank
takes from each, this rank's stream definition (``MixSpec``) and the loader that streams it (or
holds the sets in memory, ``resident``)."""

from __future__ import annotations

import os

from sio.shardset import ShardError
from sio.train.distributed import World
from sio.train.mixing import rank_share, steps_per_epoch
from sio.train.resident import ResidentBatches, load_resident
from sio.train.sources import LocatedSet, open_extras, open_synthetic
from sio.train.stream import Fetcher, MixedBatches, MixSpec, SharedEpoch, StreamLoader


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
    """({source name: LocatedSet} of the sources a batch draws from, {extra: count per
    batch}): the real set, the synthetic set when ``counts`` has synthetic samples, and the
    method's extra sets, each checked against the real one. ``real`` is a location or an
    opened LocatedSet."""
    real_source = real if isinstance(real, LocatedSet) else LocatedSet.open(real)
    manifest = real_source.manifest
    sources = {"real": real_source}
    alpha = counts[0] / (counts[0] + counts[1]) if alpha is None else alpha
    syn_source = open_synthetic(manifest, synthetic, alpha, counts[1])
    if syn_source is not None:
        sources["synthetic"] = syn_source
    extras = open_extras(manifest, method.inputs(config), method.sources())
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


def check_batch_memory(source: LocatedSet, images: int) -> None:
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


def loader(plan, method, position: SharedEpoch):
    """The batches of a run's ``plan`` (the trainer's TrainPlan): DataLoader workers streaming
    shards, or resident sets in memory."""
    config = plan.config
    spec = _spec(
        plan.sources,
        plan.shares,
        plan.steps_per_epoch,
        plan.seed,
        config,
        method,
        plan.world,
    )
    if config.resident:
        fetcher = Fetcher(config.cache_dir, config.cache_limit, config.read_timeout)
        sets = {
            name: load_resident(source, plan.device, fetcher)
            for name, source in plan.sources.items()
        }
        return ResidentBatches(spec, position, sets, {name: plan.shares[name] for name in sets})
    pin_memory = str(plan.device).startswith("cuda")
    batches = MixedBatches(spec, position)  # the workers make no step past the run's last
    return StreamLoader(batches, config.num_workers, pin_memory, end_step=plan.total_steps)
