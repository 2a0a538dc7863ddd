"""The shape of a StyleGAN2-ADA generator: its init arguments, checked and typed.

A network pickle records the arguments the generator was built with (``z_dim``, ``c_dim``,
``w_dim``, ``img_resolution``, ``img_channels``, ``mapping_kwargs``, ``synthesis_kwargs``);
these fix the architecture, the parameters fill it. Unknown arguments (e.g. StyleGAN3's) are
refused by name rather than ignored. ``num_fp16_res`` and ``fp16_channels_last`` only choose the
number format of NVIDIA's implementation; the network here computes in float32.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from sio.generate.stylegan2.ops import ACTIVATIONS

ARCHITECTURES = ("orig", "skip", "resnet")
TOP_LEVEL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


@dataclass(frozen=True)
class MappingSpec:
    num_layers: int = 8
    embed_features: int | None = None  # None: w_dim
    layer_features: int | None = None  # None: w_dim
    activation: str = "lrelu"
    lr_multiplier: float = 0.01
    w_avg_beta: float | None = 0.995  # None: no running mean of w, so no truncation


@dataclass(frozen=True)
class SynthesisSpec:
    channel_base: int = 32768  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    architecture: str = "skip"
    resample_filter: tuple[float, ...] = (1, 3, 3, 1)
    conv_clamp: float | None = None
    kernel_size: int = 3
    use_noise: bool = True
    activation: str = "lrelu"
    num_fp16_res: int = 0
    fp16_channels_last: bool = False


@dataclass(frozen=True)
class GeneratorSpec:
    z_dim: int
    c_dim: int
    w_dim: int
    img_resolution: int
    img_channels: int
    mapping: MappingSpec = field(default_factory=MappingSpec)
    synthesis: SynthesisSpec = field(default_factory=SynthesisSpec)

    def __post_init__(self):
        res = self.img_resolution
        if res < 4 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {res}")
        if self.synthesis.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.synthesis.architecture!r} not in {ARCHITECTURES}")
        for part in (self.mapping, self.synthesis):
            if part.activation not in ACTIVATIONS:
                raise ValueError(f"activation {part.activation!r} not in {sorted(ACTIVATIONS)}")
        if self.synthesis.kernel_size % 2 == 0 or len(self.synthesis.resample_filter) % 2:
            raise ValueError("supported: odd kernel_size and a resample_filter of even length")

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def channels(self, resolution: int) -> int:
        return min(self.synthesis.channel_base // resolution, self.synthesis.channel_max)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> GeneratorSpec:
        """From the generator's init arguments as stored in a pickle or the export JSON."""
        known = (*TOP_LEVEL, "mapping_kwargs", "synthesis_kwargs")
        _refuse_unknown(kwargs, known, "generator")
        missing = [k for k in TOP_LEVEL if k not in kwargs]
        if missing:
            raise ValueError(f"generator init arguments lack {missing}")
        return cls(
            **{k: int(kwargs[k]) for k in TOP_LEVEL},
            mapping=_sub_spec(MappingSpec, kwargs.get("mapping_kwargs") or {}, "mapping_kwargs"),
            synthesis=_sub_spec(
                SynthesisSpec, kwargs.get("synthesis_kwargs") or {}, "synthesis_kwargs"
            ),
        )

    def to_kwargs(self) -> dict:
        """The init arguments again, JSON-ready (the export's ``init_kwargs``)."""
        out = {k: getattr(self, k) for k in TOP_LEVEL}
        out["mapping_kwargs"] = dataclasses.asdict(self.mapping)
        synthesis = dataclasses.asdict(self.synthesis)
        synthesis["resample_filter"] = list(self.synthesis.resample_filter)
        out["synthesis_kwargs"] = synthesis
        return out


def _refuse_unknown(kwargs: dict, known, where: str) -> None:
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(
            f"not a StyleGAN2-ADA generator: unsupported {where} arguments {unknown} "
            f"(supported: {list(known)})"
        )


INTEGERS = {
    "num_layers",
    "embed_features",
    "layer_features",
    "channel_base",
    "channel_max",
    "kernel_size",
    "num_fp16_res",
}
FLAGS = {"use_noise", "fp16_channels_last"}
TEXTS = {"activation", "architecture"}


def _convert(name: str, value):
    if value is None or name in TEXTS:
        return value
    if name == "resample_filter":
        return tuple(float(v) for v in value)
    if name in FLAGS:
        return bool(value)
    return int(value) if name in INTEGERS else float(value)


def _sub_spec(cls, kwargs: dict, where: str):
    known = [f.name for f in dataclasses.fields(cls)]
    _refuse_unknown(kwargs, known, where)
    return cls(**{name: _convert(name, value) for name, value in kwargs.items()})
