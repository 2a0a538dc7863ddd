"""The built-in conditional DDPM: a diffusers UNet2DModel with a class embedding, its DDIM/DDPM
sampler (model.py) and its training on a real shard set (train.py)."""

from sio.generate.ddpm.model import DDPMGenerator
from sio.generate.ddpm.train import train_ddpm, train_from_shard_set

__all__ = ["DDPMGenerator", "train_ddpm", "train_from_shard_set"]
