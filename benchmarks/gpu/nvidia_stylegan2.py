"""7. nvidia: NVIDIA's own stylegan2-ada-pytorch Generator at the CIFAR-10 configuration (with
``--nvidia DIR``), its default path and force_fp32, beside sio's StyleGAN2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpu.generation import parameters
from gpu.harness import CLASSES, Bench


def nvidia(bench: Bench, folder: Path, force_fp32: bool) -> dict:
    """NVIDIA's own Generator (stylegan2-ada-pytorch's training/networks.py) at --cfg=cifar."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from training.networks import Generator  # NVIDIA's checkout, given with --nvidia

    size = bench.size["stylegan2"]
    torch.manual_seed(0)
    network = Generator(
        z_dim=512,
        c_dim=CLASSES,
        w_dim=512,
        img_resolution=bench.size["image"],
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={
            "channel_base": size["channel_base"],
            "channel_max": size["channel_max"],
            "num_fp16_res": 4,
            "conv_clamp": 256,
        },
    )
    network = network.eval().requires_grad_(False).to(bench.device)
    batch, calls = size["batch"], size["calls"]
    c = F.one_hot(torch.arange(batch) % CLASSES, CLASSES).float().to(bench.device)

    @torch.no_grad()
    def call(i):  # as generate.py does it, with sio's quantisation and copy to the host
        z = torch.from_numpy(np.random.RandomState(i).randn(batch, 512)).float().to(bench.device)
        images = network(z, c, truncation_psi=1, noise_mode="const", force_fp32=force_fp32)
        (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()

    first_s = bench.first_call_s(call)  # on a GPU its first call builds NVIDIA's CUDA plugins
    seconds = bench.timed(call, calls, warmup=1)
    from torch_utils.ops import bias_act, upfirdn2d  # NVIDIA's: did its CUDA plugins build?

    plugins = {"bias_act": bias_act._plugin is not None, "upfirdn2d": upfirdn2d._plugin is not None}
    return {
        "images_per_s": batch * calls / seconds,
        "batch": batch,
        "calls": calls,
        "seconds": seconds,
        "first_call_s": first_s,
        "force_fp32": force_fp32,
        "parameters": parameters(network),
        "cuda_plugins_built": plugins,
    }


def run_nvidia(bench: Bench, folder: str | None) -> None:
    if not folder:
        bench.data["sections"]["nvidia"]["stylegan2_ada"] = {"not_run": "no --nvidia DIR given"}
        return
    modes = (True, False) if bench.cuda else (True,)  # its fp16 layers run on a GPU only
    for force in modes:
        key = "force_fp32" if force else "default_fp16_top4"
        bench.measure("nvidia", key, lambda f=force: nvidia(bench, Path(folder), f))
    ours = bench.data["sections"]["generation"].get("stylegan2_cifar10_fp32", {})
    theirs = bench.data["sections"]["nvidia"].get("force_fp32", {})
    if "images_per_s" in ours and "images_per_s" in theirs:
        bench.data["sections"]["nvidia"]["sio_fp32_over_nvidia_fp32"] = {
            "ratio": ours["images_per_s"] / theirs["images_per_s"]
        }
        bench.write()
