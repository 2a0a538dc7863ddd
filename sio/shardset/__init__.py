"""The shard-set contract between stages: the format and manifest, reading in both encodings
(PNG per sample, batched uint8 records), the one shard writer, verify, subset and convert.

Stages meet only here and in run folders; this package imports the foundation alone.
"""

from sio.shardset.convert import convert_shard_set
from sio.shardset.dataset import ShardDataset, ShardStream
from sio.shardset.format import (
    ENCODINGS,
    MANIFEST,
    Manifest,
    ShardError,
    ShardInfo,
    encode_png,
)
from sio.shardset.read import (
    decode_sample,
    iter_batches,
    iter_chunks,
    iter_samples,
    read_manifest,
    shard_chunks,
    shard_urls,
)
from sio.shardset.records import decode_record
from sio.shardset.shard import Check, Rows, ShardRef, decode_shard
from sio.shardset.subset import subset_shard_set
from sio.shardset.tario import check_shard_bytes
from sio.shardset.verify import verify_shard_set
from sio.shardset.write import ShardFileWriter, ShardSetWriter, ShardStats, manifest_from_stats

__all__ = [
    "ENCODINGS",
    "MANIFEST",
    "Check",
    "Manifest",
    "ShardDataset",
    "ShardError",
    "ShardStream",
    "ShardFileWriter",
    "ShardInfo",
    "ShardRef",
    "Rows",
    "ShardStats",
    "ShardSetWriter",
    "check_shard_bytes",
    "convert_shard_set",
    "decode_record",
    "decode_sample",
    "decode_shard",
    "encode_png",
    "iter_batches",
    "iter_chunks",
    "iter_samples",
    "manifest_from_stats",
    "read_manifest",
    "shard_chunks",
    "shard_urls",
    "subset_shard_set",
    "verify_shard_set",
]
