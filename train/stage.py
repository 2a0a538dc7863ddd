"""What the train stage says defines a run folder of ``sio run`` (``sio.core.stages``), and the
fields of the training config that change none of its output."""

from __future__ import annotations

from pathlib import Path

from sio.core.config import to_dict
from sio.core.files import sha256_file
from sio.core.stages import StageDefinition
from sio.shardset import MANIFEST
from sio.train.config import TrainConfig

# fields of the training config that may change between a run and its resumption
# (none changes the batches: those depend on (seed, step) alone, whatever the ranks and workers;
# precision, channels_last and compile change the arithmetic, so a resume must keep them)
RESUMABLE_CHANGES = (
    "on_error",
    "num_workers",
    "trace",
    "checkpoint_every",
    "cache_dir",
    "cache_limit",
    "read_timeout",
    "shuffle_buffer",  # removed from the config; old checkpoints and stage.json files carry it
    "device_augment",  # the same crop/flip, on the device: bitwise the same batches
)


def train_stage(
    config: TrainConfig,
    alpha: float,
    seed: int,
    real_manifest_sha256: str,
    synthetic_shards_sha256: str | None,
) -> StageDefinition:
    """A training's folder: its config, alpha, seed and the shard sets it reads (the real set's
    manifest, the synthetic set's shards, the method's extra sets' manifests). A change of a
    ``RESUMABLE_CHANGES`` field resumes the run or keeps its checkpoint; a field a ``stage.json``
    lacks was at its default."""
    from sio.train.methods import method_inputs  # the registry loads the methods' modules

    made = {
        "train": to_dict(config),
        "alpha": alpha,
        "seed": seed,
        "real_manifest_sha256": real_manifest_sha256,
        "synthetic_shards_sha256": synthetic_shards_sha256,
    }
    for key, path in method_inputs(config).items():  # OE's outliers, PixMix's pictures
        made[f"{key}_manifest_sha256"] = sha256_file(Path(path) / MANIFEST)
    return StageDefinition(
        made,
        resumable=tuple(f"train.{field}" for field in RESUMABLE_CHANGES),
        defaults={"train": to_dict(TrainConfig())},
    )
