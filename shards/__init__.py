"""Shard stage: real datasets on disk (CIFAR, MNIST, SVHN, image folders, OpenOOD lists) to
benchmarks of shard sets. The shard-set format itself is the contract in ``sio.shardset``."""

from sio.core.lazy import lazy_exports

_EXPORTS = {
    "Benchmark": "sio.shards.benchmark",
    "read_benchmark": "sio.shards.benchmark",
    "write_benchmark": "sio.shards.benchmark",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
