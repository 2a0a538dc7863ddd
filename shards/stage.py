"""What the shard stage says defines its folder under ``sio run`` (``sio.core.stages``)."""

from __future__ import annotations

from sio.core.config import to_dict
from sio.core.stages import StageDefinition
from sio.shards.config import ShardConfig


def shard_stage(config: ShardConfig) -> StageDefinition:
    """A benchmark's folder: the whole ``shard`` section (no field of it leaves the shards as
    they are)."""
    return StageDefinition({"shard": to_dict(config)})
