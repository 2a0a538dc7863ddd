"""StyleGAN2's operations in plain PyTorch, written from the papers.

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2), Sec. 2.2:
a style ``s`` (one scale per input channel i) modulates the weights, ``w'_ijk = s_i · w_ijk``, and
demodulation rescales each output channel j back to unit variance,
``w''_ijk = w'_ijk / sqrt(Σ_{i,k} w'_ijk² + ε)``, ε = 1e-8. Since ``s`` acts on input channels
and the demodulation on output channels, the same result is
``y_j = d_j · conv(x · s, w)_j`` with ``d_j = (Σ_i s_i² Σ_k w_ijk² + ε)^-1/2``: one ordinary
convolution with weights shared by the whole batch (no per-sample weights).

Up-sampling (StyleGAN2 Appendix B, after Zhang 2019): a stride-2 transposed convolution, then a
low-pass FIR filter (the separable ``[1, 3, 3, 1]``, normalised, times ``up² = 4`` so zero
insertion keeps the signal's magnitude). Outputs are centred: input pixel i lands at 2i + ½.
Layers use the equalised learning rate of ProGAN (Karras et al. 2018): weights are stored as
N(0, 1)/λ and scaled at run time by ``λ / sqrt(fan_in)``, biases by λ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2)

# name -> (function, gain that keeps unit variance: He et al. 2015 for the ReLU family)
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, SQRT2),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), SQRT2),
}


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps)`` over the feature dimension (StyleGAN's pixel norm of z)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def bias_act(x, bias=None, activation="linear", gain=1.0, clamp=None):
    """``clamp(act(x + b) · g_act · gain, ±clamp)``; ``b`` broadcast over dimension 1."""
    if bias is not None:
        x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    function, default_gain = ACTIVATIONS[activation]
    x = function(x)
    if default_gain * gain != 1:
        x = x * (default_gain * gain)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def fir_kernel(filter2d: torch.Tensor, channels: int, gain: float) -> torch.Tensor:
    """A depthwise conv2d kernel that *convolves* (not correlates) with ``filter2d · gain``."""
    kernel = filter2d.flip([0, 1]) * gain
    return kernel.to(torch.float32).expand(channels, 1, *kernel.shape)


def upsample_image(x: torch.Tensor, filter2d: torch.Tensor) -> torch.Tensor:
    """×2 up-sampling: zero insertion, then the FIR filter times 4; NxCxHxW -> NxCx2Hx2W.

    A transposed conv with stride 2 scatters pixel i to ``2i + t`` for tap t; for a filter of
    even length L the centred output starts at tap ``L/2 - 1``."""
    taps = filter2d.shape[-1]
    if taps % 2:
        raise ValueError(f"resample filters of odd length ({taps}) are not supported")
    channels, size = x.shape[1], 2 * x.shape[-1]
    kernel = filter2d * 4  # a transposed conv scatters, i.e. convolves: no flip
    kernel = kernel.to(x.dtype).expand(channels, 1, taps, taps)
    y = F.conv_transpose2d(x, kernel, stride=2, groups=channels)
    start = taps // 2 - 1
    return y[:, :, start : start + size, start : start + size]


def blur(x: torch.Tensor, filter2d: torch.Tensor, pad: int) -> torch.Tensor:
    """Convolve every channel with the FIR filter times 4, zero padding ``pad`` on all sides."""
    kernel = fir_kernel(filter2d, x.shape[1], 4.0).to(x.dtype)
    return F.conv2d(x, kernel, padding=pad, groups=x.shape[1])


def conv_up(x: torch.Tensor, weight: torch.Tensor, filter2d: torch.Tensor) -> torch.Tensor:
    """×2 up-sampling convolution: ``weight`` (O×I×k×k, k odd) applied as a true convolution by
    a stride-2 transposed conv, then the FIR low-pass; NxIxHxW -> NxOx2Hx2W.

    The transposed conv puts input pixel i's kernel centre at ``2i + (k-1)/2``; blurring with
    padding ``(L - k + 1)/2`` (L = filter length) moves it to ``2i + ½`` and gives 2H outputs."""
    kernel, taps = weight.shape[-1], filter2d.shape[-1]
    if kernel % 2 == 0 or taps % 2:
        raise ValueError(
            f"up-sampling needs an odd kernel and an even filter, got {kernel} and {taps} taps"
        )
    y = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
    return blur(y, filter2d, (taps - kernel + 1) // 2)


def modulated_conv(x, weight, styles, *, demodulate=True, up=False, filter2d=None):
    """Modulated (and demodulated) convolution for a batch: NxIxHxW, styles NxI -> NxOxH'xW'.

    Equal to the per-sample weights ``w''`` of StyleGAN2 Eq. 1 and 3, computed as
    ``d · conv(x · s, w)`` (see the module docstring)."""
    x = x * styles.to(x.dtype).reshape(*styles.shape, 1, 1)
    w = weight.to(x.dtype)
    x = conv_up(x, w, filter2d) if up else F.conv2d(x, w, padding=weight.shape[-1] // 2)
    if not demodulate:
        return x
    energy = styles.square() @ weight.square().sum(dim=[2, 3]).t()  # N×O: Σ_i s_i² Σ_k w_ijk²
    return x * (energy + 1e-8).rsqrt().to(x.dtype).reshape(*energy.shape, 1, 1)
