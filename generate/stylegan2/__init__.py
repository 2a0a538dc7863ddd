"""StyleGAN2-ADA: a clean-room PyTorch generator (network.py, ops.py) built from a spec
(spec.py), loaded from NVIDIA's pickles by a restricted unpickler (unpickle.py, load.py) or from
safetensors, exported by export.py; generator.py is the sio generator around it."""

from sio.generate.stylegan2.export import export_safetensors
from sio.generate.stylegan2.generator import StyleGAN2Generator

__all__ = ["StyleGAN2Generator", "export_safetensors"]
