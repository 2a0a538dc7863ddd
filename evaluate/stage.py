"""What the evaluate stage says defines its folder under ``sio run`` (``sio.core.stages``)."""

from __future__ import annotations

from sio.core.config import to_dict
from sio.core.stages import FormerKey, StageDefinition
from sio.evaluate.config import EvaluateConfig


def evaluate_stage(
    config: EvaluateConfig, checkpoint_sha256: str, benchmark_sha256: str
) -> StageDefinition:
    """An evaluation's folder: the ``evaluate`` section, the classifier's checkpoint and the
    benchmark's record (no field of it leaves the results as they are). A folder evaluated
    before a key of the section was renamed (``RENAMED_KEYS``) is read with its new name."""
    definition = {
        "evaluate": to_dict(config),
        "checkpoint_sha256": checkpoint_sha256,
        "benchmark_sha256": benchmark_sha256,
    }
    renamed = {new: FormerKey(old) for old, new in EvaluateConfig.RENAMED_KEYS.items()}
    return StageDefinition(definition, defaults={"evaluate": renamed})
