"""TempScale's NLL fit: sio's Newton's method on 1/T against the L-BFGS fit it replaced.

The L-BFGS fit is written out here as sio had it before session 11 (strong-Wolfe line search on
log T from T = 1.5, at most 200 iterations, gradient tolerance 1e-10, one thread). For each case
(random float64 val logits, the true class raised by a margin), both fits run ``--rounds`` times
in this process, alternating; the table gives each T, their relative difference, the NLL at
each T (the lower is the better fit) and the median seconds.

Usage: python benchmarks/tempscale_fit.py [--rounds 3] [--out tempscale_fit.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

HERE = Path(__file__).resolve().parent
# (val rows, classes, margin of the true class)
CASES = ((5_000, 1_000, 3.0), (5_000, 1_000, 6.0), (1_000, 10, 2.0))


def lbfgs_temperature(logits: np.ndarray, labels: np.ndarray, start: float = 1.5) -> float:
    """The fit sio used before: L-BFGS with a strong-Wolfe line search on log T."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)
    log_t = torch.tensor(float(np.log(start)), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-10
    )

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    return float(log_t.detach().exp())


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), labels]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="tempscale_fit.json", help="file in benchmarks/results")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from evaluate import machine  # benchmarks/evaluate.py
    from sio.core.files import write_json_atomic
    from sio.evaluate.detectors.logits import fit_temperature

    fits = {"newton": fit_temperature, "lbfgs": lbfgs_temperature}
    rng = np.random.default_rng(0)
    rows = []
    for n, classes, margin in CASES:
        labels = rng.integers(0, classes, n)
        logits = rng.normal(0, 1, (n, classes)) + margin * np.eye(classes)[labels]
        seconds = {name: [] for name in fits}
        found = {}
        for r in range(args.rounds):
            for name in list(fits) if r % 2 == 0 else list(fits)[::-1]:
                start = time.perf_counter()
                found[name] = fits[name](logits, labels)
                seconds[name].append(time.perf_counter() - start)
        row = {
            "rows": n,
            "classes": classes,
            "margin": margin,
            **{f"{name}_t": found[name] for name in fits},
            **{f"{name}_nll": nll(logits, labels, found[name]) for name in fits},
            **{f"{name}_s": statistics.median(seconds[name]) for name in fits},
            "relative_difference": abs(found["newton"] - found["lbfgs"]) / found["newton"],
        }
        rows.append(row)
        print(
            f"{n} x {classes}, margin {margin}: Newton T {row['newton_t']!r} "
            f"({row['newton_s']:.3f} s, NLL {row['newton_nll']!r}), L-BFGS T {row['lbfgs_t']!r} "
            f"({row['lbfgs_s']:.3f} s, NLL {row['lbfgs_nll']!r}), "
            f"relative difference {row['relative_difference']:.1e}",
            flush=True,
        )
    write_json_atomic(
        HERE / "results" / args.out,
        {"command": " ".join(sys.argv), "rounds": args.rounds, "cases": rows, "machine": machine()},
    )


if __name__ == "__main__":
    main()
