"""The shard-set contract between stages: the format and manifest, reading in both encodings
(PNG per sample, batched uint8 records), the one shard writer, verify, subset and convert.

Stages meet only here and in run folders; this package imports the foundation alone.
"""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use (``sio --help`` and a
# command's config check must not wait for torch, which the readers import)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.shardset.convert": ("convert_shard_set",),
        "sio.shardset.dataset": ("ShardDataset", "ShardStream"),
        "sio.shardset.format": (
            "ENCODINGS",
            "MANIFEST",
            "Manifest",
            "ShardError",
            "ShardInfo",
            "encode_png",
        ),
        "sio.shardset.read": (
            "decode_sample",
            "iter_batches",
            "iter_chunks",
            "iter_samples",
            "read_manifest",
            "shard_chunks",
            "shard_urls",
        ),
        "sio.shardset.records": ("decode_record",),
        "sio.shardset.shard": ("Check", "Rows", "ShardRef", "decode_shard"),
        "sio.shardset.subset": ("subset_shard_set",),
        "sio.shardset.tario": ("check_shard_bytes",),
        "sio.shardset.verify": ("verify_shard_set",),
        "sio.shardset.write": (
            "ShardFileWriter",
            "ShardSetWriter",
            "ShardStats",
            "manifest_from_stats",
        ),
    },
)
