"""Every section in order (most wanted first, so a run cut short keeps those), then the table."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import gpu
from gpu.ceiling import run_ceilings
from gpu.compiling import run_compile
from gpu.evaluation import evaluation
from gpu.generation import run_generation
from gpu.harness import Bench, table
from gpu.loader import run_loader
from gpu.nvidia_stylegan2 import run_nvidia
from gpu.sets import Sets
from gpu.trainer import run_trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=gpu.__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes: seconds on a CPU")
    default_out = Path(__file__).parents[1] / "results" / "gpu.json"
    parser.add_argument("--out", default=str(default_out), help="the results JSON")
    parser.add_argument("--nvidia", default=None, help="a stylegan2-ada-pytorch checkout")
    parser.add_argument("--budget", type=float, default=None, help="seconds (cuda: 420)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch; use --device cpu")
    if args.small:
        torch.set_num_threads(1)  # a smoke test: no OpenMP barriers on a shared small machine
    bench = Bench(args)
    print(f"writing {bench.out} after every measurement", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sio-gpu-bench-") as scratch:
        root = Path(scratch)
        sets = Sets(bench, root)
        run_ceilings(bench)
        run_trainer(bench, sets)
        run_loader(bench, sets)
        run_generation(bench)
        bench.measure("evaluation", "all_detectors", lambda: evaluation(bench, root))
        run_compile(bench, sets)
        run_nvidia(bench, args.nvidia)
    bench.data["complete"] = True
    bench.write()
    print(table(bench))
    return 1 if bench.errors else 0
