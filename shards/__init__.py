"""Shard stage: real datasets to WebDataset shard sets, and the shard-set format itself."""

from sio.files import sha256_file

from .benchmark import Benchmark, read_benchmark, write_benchmark
from .format import Manifest, ShardError, ShardInfo, ShardSetWriter, encode_png
from .read import decode_sample, iter_batches, iter_samples, read_manifest, shard_urls
from .shardfile import ShardFileWriter, ShardStats, manifest_from_stats
from .verify import verify_shard_set

__all__ = [
    "Benchmark",
    "Manifest",
    "ShardError",
    "ShardFileWriter",
    "ShardInfo",
    "ShardStats",
    "ShardSetWriter",
    "decode_sample",
    "encode_png",
    "iter_batches",
    "iter_samples",
    "manifest_from_stats",
    "read_benchmark",
    "read_manifest",
    "sha256_file",
    "shard_urls",
    "verify_shard_set",
    "write_benchmark",
]
