"""Shard stage: real datasets on disk (CIFAR, MNIST, SVHN, image folders, OpenOOD lists) to
benchmarks of shard sets. The shard-set format itself is the contract in ``sio.shardset``."""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.shards.benchmark": ("Benchmark", "read_benchmark", "write_benchmark"),
        "sio.shards.build": ("check_shard_config",),
        "sio.shards.config": ("ShardConfig",),
        "sio.shards.stage": ("shard_stage",),
    },
)
