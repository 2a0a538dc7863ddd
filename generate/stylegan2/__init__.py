"""StyleGAN2-ADA: a clean-room PyTorch generator (network.py, ops.py) built from a spec
(spec.py), loaded from NVIDIA's pickles by a restricted unpickler (unpickle.py, load.py) or from
safetensors, exported by export.py; generator.py is the sio generator around it."""

from sio.core.lazy import lazy_exports

# imported on first use: `sio stylegan2-export --help` loads no torch
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.generate.stylegan2.export": ("export_safetensors",),
        "sio.generate.stylegan2.generator": ("StyleGAN2Generator",),
    },
)
