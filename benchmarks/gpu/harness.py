"""The harness every GPU benchmark section shares: the sizes (full and --small), ``Bench`` (the
results JSON, rewritten atomically after every measurement, the time budget, the timers) and
the closing table. Imports sio only, so a test can load it alone."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sio.core.environment import describe_machine  # noqa: E402
from sio.core.files import write_json_atomic  # noqa: E402

SECTIONS = ("ceiling", "trainer", "loader", "generation", "evaluation", "compile", "nvidia")
ALPHA, CLASSES, PAD = 0.8, 10, 4
# the trainer's GPU options (TrainConfig fields) its second set of runs sets, and section 6's
GPU_OPTIONS = {"precision": "bf16", "channels_last": True, "device_augment": True}
COMPILE_OPTION = {"compile": True}

FULL = {
    "image": 32,
    "model": "resnet18_32",
    "batches": (128, 512),
    "ceiling_steps": (15, 50),  # warm-up, timed
    "pool": 8192,
    "real": 20_000,
    "synthetic": 10_000,
    "shard": 2000,
    "record": 1000,
    "epochs": 3,
    "steps": {128: 200, 512: 100},
    "workers": 4,
    "loader_steps": {"records": (5, 100), "png": (2, 20), "resident": (5, 100), "gather": (5, 200)},
    "builtin": {"batch": 1000, "calls": 2, "steps": 20, "blocks": (32, 64)},
    "cifar_unet": {"batch": 1024, "calls": 1, "steps": 50, "width": 1},
    "biggan": {"batch": 256, "calls": 10, "width": 128, "tiny": False},
    "stylegan2": {"batch": 1024, "calls": 10, "channel_base": 32768, "channel_max": 512},
    "bank": {"train": 50_000, "val": 1_000, "test": 9_000, "ood": 10_000, "width": 512},
    "compile_backend": "inductor",
}
SMALL = {
    "image": 16,
    "model": "small_cnn",
    "batches": (8, 16),
    "ceiling_steps": (1, 2),
    "pool": 64,
    "real": 240,
    "synthetic": 120,
    "shard": 60,
    "record": 30,
    "epochs": 2,
    "steps": {8: 2, 16: 2},
    "workers": 1,
    "loader_steps": {"records": (1, 4), "png": (1, 2), "resident": (1, 4), "gather": (1, 4)},
    "builtin": {"batch": 2, "calls": 1, "steps": 2, "blocks": (8, 16)},
    "cifar_unet": {"batch": 1, "calls": 1, "steps": 2, "width": 8},
    "biggan": {"batch": 1, "calls": 1, "width": 8, "tiny": True},
    "stylegan2": {"batch": 2, "calls": 1, "channel_base": 256, "channel_max": 16},
    "bank": {"train": 600, "val": 100, "test": 200, "ood": 150, "width": 64},
    "compile_backend": "eager",
}
# rough seconds of each measurement at full size on an H200 (for --budget; 0 with --small)
ESTIMATES = {"ceiling": 3, "trainer": 15, "loader": 4, "generation": 10, "evaluation": 20}
ESTIMATES.update({"compile": 60, "nvidia": 90})


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class Bench:
    """The run's JSON, rewritten after every measurement, and its table rows."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.small = args.small
        self.size = SMALL if args.small else FULL
        self.out = Path(args.out)
        self.budget = args.budget if args.budget is not None else (420.0 if self.cuda else None)
        self.start = time.perf_counter()
        self.errors = 0
        self.gpu_options, self.compile_option = dict(GPU_OPTIONS), dict(COMPILE_OPTION)
        self.data = {
            "complete": False,
            "device": str(self.device),
            "small": self.small,
            "budget_s": self.budget,
            "sizes": {k: v for k, v in self.size.items() if k != "steps"}
            | {"steps_per_epoch": {str(k): v for k, v in self.size["steps"].items()}},
            "alpha": ALPHA,
            "machine": machine(self.device),
            "trainer_options": {
                "gpu_options": self.gpu_options,
                "compile": {**self.gpu_options, **self.compile_option},
                "note": "TrainConfig fields of the trainer rows named gpu_options and of "
                "compile.trainer_*; the fp32 rows set none of them",
            },
            "sections": {name: {} for name in SECTIONS},
        }
        self.write()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out, self.data)

    def measure(self, section: str, key: str, run) -> dict:
        """Run one measurement (``run()`` returns its entry), record it and rewrite the JSON."""
        estimate = 0 if self.small else ESTIMATES[section]
        if self.budget is not None and self.elapsed() + estimate > self.budget:
            entry = {"not_run": f"the time budget of {self.budget:.0f} s would be passed"}
        else:
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                entry = run()
                entry["peak_gpu_bytes"] = torch.cuda.max_memory_allocated() if self.cuda else None
            except Exception as error:  # one broken measurement must not lose the others
                traceback.print_exc()
                entry = {"error": f"{type(error).__name__}: {error}"}
                self.errors += 1
        self.data["sections"][section][key] = entry
        self.write()
        print(f"[{self.elapsed():6.1f} s] {section} {key}: {summary(entry)}", file=sys.stderr)
        return entry

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def first_call_s(self, call) -> float:
        """Seconds of ``call(0)`` until the device is done (a compile, a plugin build)."""
        start = time.perf_counter()
        call(0)
        self.sync()
        return time.perf_counter() - start

    def timed(self, call, calls: int, warmup: int) -> float:
        """Seconds for ``calls`` calls of ``call(i)`` after ``warmup`` calls: CUDA events on a
        GPU, wall time on the CPU."""
        for i in range(warmup):
            call(i)
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(warmup, warmup + calls):
                call(i)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        start = time.perf_counter()
        for i in range(warmup, warmup + calls):
            call(i)
        return time.perf_counter() - start


def machine(device: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {**describe_machine(), "numpy": np.__version__}
    for package in ("diffusers", "faiss-cpu", "pytorch-pretrained-biggan", "webdataset"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["nvidia_smi"] = smi.stdout.strip()
    return info


def summary(entry: dict) -> str:
    for key in ("not_run", "error"):
        if key in entry:
            return f"{key}: {entry[key]}"
    if "images_per_s" in entry:
        text = f"{entry['images_per_s']:,.0f} images/s"
        if "vs_ceiling" in entry:
            text += f" ({entry['vs_ceiling']:.2f} of the ceiling)"
        return text
    return f"{entry.get('total_s', 0):.2f} s"


def table(bench: Bench) -> str:
    lines = [
        f"device {bench.device} ({bench.data['machine'].get('cuda') or 'CPU'}), "
        f"{'--small' if bench.small else 'full sizes'}, {bench.elapsed():.0f} s",
        "",
        "| section | measurement | images/s (or s) | vs ceiling | peak GPU MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for section, entries in bench.data["sections"].items():
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            if "not_run" in entry or "error" in entry:
                value = "not run" if "not_run" in entry else "error"
            elif "images_per_s" in entry:
                value = f"{entry['images_per_s']:,.0f}"
            elif "total_s" in entry:
                value = f"{entry['total_s']:.2f} s"
            elif "ratio" in entry:
                value = f"ratio {entry['ratio']:.2f}"
            else:
                continue
            ratio = f"{entry['vs_ceiling']:.2f}" if "vs_ceiling" in entry else ""
            peak = entry.get("peak_gpu_bytes")
            memory = f"{peak / 2**20:,.0f}" if isinstance(peak, (int, float)) else ""
            lines.append(f"| {section} | {key} | {value} | {ratio} | {memory} |")
    return "\n".join(lines)
