"""What the generate stage says defines its folders under ``sio run`` (``sio.core.stages``): a
built-in generator's training, a synthetic set, its quality measurement; with the fields of
each that change none of its output (``sio.generate.config``: ``BYTE_NEUTRAL``,
``TRAIN_BYTE_NEUTRAL``)."""

from __future__ import annotations

from sio.core.config import to_dict
from sio.core.stages import StageDefinition
from sio.generate.config import (
    BYTE_NEUTRAL,
    TRAIN_ADDED,
    TRAIN_BYTE_NEUTRAL,
    FidConfig,
    GenerateConfig,
    GeneratorConfig,
    Text2ImageSettings,
)


def training_definition(config: GeneratorConfig) -> dict:
    """What makes a built-in DDPM's trained weights' bytes: the model and training settings,
    less the fields that change none (``TRAIN_BYTE_NEUTRAL``)."""
    train = to_dict(config.train)
    for key in TRAIN_BYTE_NEUTRAL:
        train.pop(key, None)
    for key, default in TRAIN_ADDED.items():  # weights trained before it existed had its default
        if train[key] == default:
            del train[key]
    return {"model": to_dict(config.model), "train": train}


def generator_training_stage(
    generator: GeneratorConfig, real_manifest_sha256: str
) -> StageDefinition:
    """A built-in generator's training folder: its model and training settings (less the log
    and checkpoint cadence) and the real set it learns."""
    return StageDefinition(
        {**training_definition(generator), "real_manifest_sha256": real_manifest_sha256}
    )


def generate_stage(
    job: GenerateConfig,
    generator: GeneratorConfig,
    generator_weights_sha256: str,
    classifier_sha256: str,
) -> StageDefinition:
    """A synthetic set's folder: the job, the generator's sampling settings (its weights'
    fingerprint covers the model and training), the labelling classifier. A new largest count
    resizes the set (its complete shards stay) and the encoder threads change no byte: the job
    resumes on the folder as it is (``BYTE_NEUTRAL``)."""
    settings = to_dict(generator)
    for key in ("model", "train", "label"):
        del settings[key]
    definition = {
        "generate": to_dict(job),
        "generator": settings,
        "generator_weights_sha256": generator_weights_sha256,
        "classifier_sha256": classifier_sha256,
    }
    # a folder made before generator.text2image or labels.filter existed was made with defaults
    defaults = {
        "generator": {"text2image": to_dict(Text2ImageSettings()), "labels": {"filter": "none"}}
    }
    return StageDefinition(definition, resumable=BYTE_NEUTRAL, defaults=defaults)


def quality_stage(
    fid: FidConfig,
    num_synthetic: int,
    synthetic_shards_sha256: str,
    real_manifest_sha256: str,
    classifier_sha256: str | None,
) -> StageDefinition:
    """A synthetic set's quality folder (FID, or the classifier-feature distance when
    ``classifier_sha256`` is given) of its first ``num_synthetic`` images: a resized set is
    measured again, its first images the same."""
    definition = {
        "fid": to_dict(fid),
        "num_synthetic": num_synthetic,
        "synthetic_shards_sha256": synthetic_shards_sha256,
        "real_manifest_sha256": real_manifest_sha256,
        "classifier_sha256": classifier_sha256,
    }
    return StageDefinition(definition, resumable=("synthetic_shards_sha256",))
