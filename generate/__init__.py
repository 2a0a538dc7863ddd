"""Generate stage: generators (network + sampler) and resumable synthetic shard sets."""

from .biggan import BigGANGenerator
from .ddpm import DDPMGenerator
from .job import Job, run_job
from .registry import GENERATORS, generate_shard_set, load_generator, weights_fingerprint
from .stylegan2 import StyleGAN2Generator
from .stylegan2_export import export_safetensors
from .train_ddpm import train_ddpm, train_from_shard_set

__all__ = [
    "GENERATORS",
    "BigGANGenerator",
    "DDPMGenerator",
    "Job",
    "StyleGAN2Generator",
    "export_safetensors",
    "generate_shard_set",
    "load_generator",
    "run_job",
    "train_ddpm",
    "train_from_shard_set",
    "weights_fingerprint",
]
