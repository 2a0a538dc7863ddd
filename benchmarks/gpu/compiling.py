"""6. compile: torch.compile of the StyleGAN2 and of the ceiling's model, and the trainer with
its GPU options plus ``compile: true``; compile time recorded apart."""

from __future__ import annotations

from gpu.ceiling import ceiling
from gpu.generation import generation, stylegan2
from gpu.harness import Bench
from gpu.sets import Sets
from gpu.trainer import trainer, with_ceiling


def run_compile(bench: Bench, sets: Sets) -> None:
    bench.measure(
        "compile",
        "stylegan2_cifar10_fp32",
        lambda: generation(bench, stylegan2, "stylegan2", "fp32", compile=True),
    )
    batch = bench.size["batches"][-1]
    bench.measure(
        "compile",
        f"ceiling_bf16_channels_last_b{batch}",
        lambda: ceiling(bench, batch, "bf16", True, compile=True),
    )
    if bench.small:  # tests/test_accelerate.py compiles a trainer run (inductor) instead
        bench.data["sections"]["compile"]["trainer"] = {
            "not_run": "--small: the trainer compiles with inductor, ~30 s on a small CPU"
        }
        return
    options = {**bench.gpu_options, **bench.compile_option}
    bench.measure(
        "compile",
        f"trainer_resident_b{batch}",
        lambda: with_ceiling(
            bench, trainer(bench, sets, batch, "resident", options), batch, options
        ),
    )
