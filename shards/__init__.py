"""Shard stage: real datasets to WebDataset shard sets, and the shard-set format itself."""

from sio.files import sha256_file

from .benchmark import Benchmark, read_benchmark, write_benchmark
from .convert import convert_shard_set
from .format import ENCODINGS, Manifest, ShardError, ShardInfo, ShardSetWriter, encode_png
from .read import (
    decode_sample,
    iter_batches,
    iter_chunks,
    iter_samples,
    read_manifest,
    shard_chunks,
    shard_urls,
)
from .records import decode_record
from .shardfile import ShardFileWriter, ShardStats, manifest_from_stats
from .subset import subset_shard_set
from .verify import verify_shard_set

__all__ = [
    "ENCODINGS",
    "Benchmark",
    "Manifest",
    "ShardError",
    "ShardFileWriter",
    "ShardInfo",
    "ShardStats",
    "ShardSetWriter",
    "convert_shard_set",
    "decode_record",
    "decode_sample",
    "encode_png",
    "iter_batches",
    "iter_chunks",
    "iter_samples",
    "manifest_from_stats",
    "read_benchmark",
    "read_manifest",
    "sha256_file",
    "shard_chunks",
    "shard_urls",
    "subset_shard_set",
    "verify_shard_set",
    "write_benchmark",
]
