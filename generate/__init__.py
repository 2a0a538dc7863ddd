"""Generate stage: generators (network + sampler) and synthetic shard sets."""

from .ddpm import ConditionalDDPM
from .job import GENERATORS, checkpoint_sha256, generate_shard_set
from .train_ddpm import train_ddpm, train_from_shard_set

__all__ = [
    "GENERATORS",
    "ConditionalDDPM",
    "checkpoint_sha256",
    "generate_shard_set",
    "train_ddpm",
    "train_from_shard_set",
]
