"""The StyleGAN2-ADA generator in plain PyTorch, written from the papers.

- **Mapping** (StyleGAN, Karras et al. 2019, Sec. 2; conditional as in ADA, Karras et al. 2020):
  ``z`` and an embedding of the one-hot class ``c`` are each scaled to unit second moment and
  concatenated; ``num_layers`` fully connected layers (leaky ReLU, learning-rate multiplier
  0.01) give ``w``, copied once per style input. Truncation: ``w' = w_avg + ψ (w − w_avg)``
  (for the first ``cutoff`` style inputs only, when given).
- **Synthesis** (StyleGAN2, Karras et al. 2020, Sec. 2 and 4): a learned 4×4 constant, then per
  resolution r = 4, 8, …, R a block of modulated 3×3 convolutions (the first of each block from
  8 on up-samples ×2 with FIR filtering), each followed by per-pixel noise times a learned
  strength (``noise_mode``: ``const`` = a stored noise image, ``random``, ``none``), a bias,
  leaky ReLU × √2 and an optional clamp. In the ``skip`` architecture (Fig. 7b) every block
  adds its toRGB output (a 1×1 modulated conv without demodulation) to the up-sampled image of
  the previous resolution; ``orig`` has a single toRGB at the end and ``resnet`` adds a
  1×1 up-sampling shortcut, both branches scaled by 1/√2.

Parameter and buffer names are those of the network pickles' state (``mapping.fc0.weight``,
``synthesis.b8.conv0.affine.bias``, …), so a state loads with a strict key check.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sio.generate.stylegan2.ops import (
    bias_act,
    conv_up,
    modulated_conv,
    normalize_2nd_moment,
    upsample_image,
)
from sio.generate.stylegan2.spec import GeneratorSpec, SynthesisSpec

NOISE_MODES = ("const", "random", "none")


def fir_filter(taps) -> torch.Tensor:
    """The separable 2-D filter ``outer(f, f)``, normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f2 = torch.outer(f, f)
    return f2 / f2.sum()


class Dense(nn.Module):
    """Fully connected layer with the equalised learning rate: ``act(x Wᵀ·λ/√in + b·λ)``."""

    def __init__(self, n_in, n_out, *, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([n_out], float(bias_init)))
        self.activation = activation
        self.weight_gain = lr_multiplier / math.sqrt(n_in)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        y = x @ (self.weight * self.weight_gain).t()
        return bias_act(y, self.bias * self.bias_gain, self.activation)


class Mapping(nn.Module):
    """z (and class c) -> ``num_ws`` copies of w, with the truncation trick."""

    def __init__(self, spec: GeneratorSpec, num_ws: int):
        super().__init__()
        m = spec.mapping
        self.z_dim, self.c_dim, self.num_ws = spec.z_dim, spec.c_dim, num_ws
        embed = (m.embed_features or spec.w_dim) if spec.c_dim else 0
        hidden = m.layer_features or spec.w_dim
        sizes = [spec.z_dim + embed] + [hidden] * (m.num_layers - 1) + [spec.w_dim]
        if spec.c_dim:
            self.embed = Dense(spec.c_dim, embed)
        for i in range(m.num_layers):
            layer = Dense(
                sizes[i], sizes[i + 1], activation=m.activation, lr_multiplier=m.lr_multiplier
            )
            self.add_module(f"fc{i}", layer)
        self.layer_names = [f"fc{i}" for i in range(m.num_layers)]
        average = torch.zeros(spec.w_dim) if m.w_avg_beta is not None else None
        self.register_buffer("w_avg", average)  # None: not in the state dict

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi == 1:
            return ws
        if self.w_avg is None:
            raise ValueError("this generator keeps no average w (w_avg_beta=None): use psi 1")
        cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
        ws[:, :cut] = self.w_avg.lerp(ws[:, :cut], truncation_psi)
        return ws


class StyleConv(nn.Module):
    """Modulated conv (optionally ×2 up-sampling) + noise + bias + activation (+ clamp)."""

    def __init__(self, in_ch, out_ch, w_dim, resolution, s: SynthesisSpec, up=False):
        super().__init__()
        self.up, self.resolution, self.activation = up, resolution, s.activation
        self.conv_clamp, self.use_noise = s.conv_clamp, s.use_noise
        self.register_buffer("resample_filter", fir_filter(s.resample_filter))
        self.affine = Dense(w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, s.kernel_size, s.kernel_size))
        if s.use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x, w, noise_mode="const", generator=None, gain=1.0):
        styles = self.affine(w)
        x = modulated_conv(x, self.weight, styles, up=self.up, filter2d=self.resample_filter)
        if self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            if isinstance(generator, list):  # one stream per image: each its own noise
                shape = (1, self.resolution, self.resolution)
                noise = torch.stack([torch.randn(shape, generator=g) for g in generator])
            else:
                shape = (x.shape[0], 1, self.resolution, self.resolution)
                noise = torch.randn(shape, generator=generator)
            noise = noise.to(x.device)
            x = x + noise * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain, clamp)


class ToImage(nn.Module):
    """toRGB: a 1×1 modulated conv without demodulation, a bias and the clamp."""

    def __init__(self, in_ch, img_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = Dense(w_dim, in_ch, bias_init=1)
        self.weight = nn.Parameter(torch.randn(img_channels, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_ch)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SkipUp(nn.Module):
    """The resnet shortcut: a bias-free 1×1 conv that up-samples ×2 (equalised lr)."""

    def __init__(self, in_ch, out_ch, s: SynthesisSpec):
        super().__init__()
        self.register_buffer("resample_filter", fir_filter(s.resample_filter))
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_ch)

    def forward(self, x, gain):
        return conv_up(x, self.weight * self.weight_gain, self.resample_filter) * gain


class Block(nn.Module):
    """One resolution of the synthesis network (see the module docstring)."""

    def __init__(self, in_ch, out_ch, spec: GeneratorSpec, resolution: int):
        super().__init__()
        s = spec.synthesis
        self.first, self.resnet = in_ch == 0, s.architecture == "resnet"
        self.is_last = resolution == spec.img_resolution
        self.register_buffer("resample_filter", fir_filter(s.resample_filter))
        if self.first:
            self.const = nn.Parameter(torch.randn(out_ch, resolution, resolution))
        else:
            self.conv0 = StyleConv(in_ch, out_ch, spec.w_dim, resolution, s, up=True)
        self.conv1 = StyleConv(out_ch, out_ch, spec.w_dim, resolution, s)
        self.num_conv = 1 if self.first else 2
        self.num_torgb = int(self.is_last or s.architecture == "skip")
        if self.num_torgb:
            self.torgb = ToImage(out_ch, spec.img_channels, spec.w_dim, s.conv_clamp)
        if self.resnet and not self.first:
            self.skip = SkipUp(in_ch, out_ch, s)

    def forward(self, x, img, ws, noise_mode="const", generator=None):
        w = ws.unbind(dim=1)
        if self.first:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, w[0], noise_mode, generator)
        elif self.resnet:
            half = math.sqrt(0.5)
            y = self.skip(x, half)
            x = self.conv0(x, w[0], noise_mode, generator)
            x = y + self.conv1(x, w[1], noise_mode, generator, gain=half)
        else:
            x = self.conv0(x, w[0], noise_mode, generator)
            x = self.conv1(x, w[1], noise_mode, generator)
        if img is not None:
            img = upsample_image(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, w[self.num_conv])
            img = y if img is None else img + y
        return x, img


class Synthesis(nn.Module):
    """Style inputs (N × num_ws × w_dim) -> image N × C × R × R (about [-1, 1])."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.block_names, self.num_ws = [], 0
        for res in spec.resolutions:
            in_ch = spec.channels(res // 2) if res > 4 else 0
            block = Block(in_ch, spec.channels(res), spec, res)
            self.add_module(f"b{res}", block)
            self.block_names.append(f"b{res}")
            self.num_ws += block.num_conv
        self.num_ws += block.num_torgb

    def forward(self, ws, noise_mode="const", generator=None):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = img = None
        start = 0
        for name in self.block_names:
            block = getattr(self, name)
            block_ws = ws.narrow(1, start, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode, generator)
            start += block.num_conv
        return img


class StyleGAN2(nn.Module):
    """The generator: ``forward(z, c, truncation_psi, truncation_cutoff, noise_mode)``."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        self.synthesis = Synthesis(spec)
        self.num_ws = self.synthesis.num_ws
        self.mapping = Mapping(spec, self.num_ws)

    def forward(
        self,
        z,
        c=None,
        truncation_psi=1.0,
        truncation_cutoff=None,
        noise_mode="const",
        generator=None,
    ):
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode, generator)
