"""Per-worker loader speed of this checkout against another checkout, side by side in one run.

The issue's speed targets are relative ("no more than 10 % below today's"), and this VM's speed
swings 1.8x within minutes with identical code, so rates measured at different times do not
compare. This script puts the two checkouts in one run instead: it starts ``--processes``
processes per checkout, alternating A, B, A, B, ...; each builds the loader benchmark's sets
with its own checkout's code (``benchmarks/loader.py``'s ``make_sets``, the same seeded images)
and times ``--rounds`` of its ``loader_round`` (PNG streaming, records streaming, resident,
ceiling; one torch thread, as in a DataLoader worker). The ratio per path is this checkout's
median images/s over the other's, and also the median of the ratios of adjacent processes (a
drift of the machine hits both of a pair alike).

The other checkout is any commit of this repository, e.g. the one before the stream redesign
(``git worktree add /tmp/before eb17ef7^``); give its folder. Writes
benchmarks/results/loader_ab.json (``--out``) after every process, "complete": false until the
end. Usage: python benchmarks/loader_ab.py OTHER [--processes 3] [--rounds 2] [--num-real N]
[--what round|scaling] (scaling: later-pass PNG, records and resident in one process, and PNG and
records through 1 and 2 DataLoader workers, the decoded cache warm). An exported tree works as
OTHER too (``git archive HEAD | tar -x -C /tmp/before``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sio.core.environment import describe_machine
from sio.core.files import write_json_atomic

HERE = Path(__file__).resolve().parents[1]

# run in a fresh process with the checkout first on sys.path: its sio, its loader benchmark
ONE_PROCESS = """
import json, sys, tempfile
from pathlib import Path
checkout, rounds, num_real = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [checkout, checkout + "/benchmarks"]
import torch
import loader
from sio.train.resident import load_resident
from sio.train.sources import LocatedSet
with tempfile.TemporaryDirectory() as scratch:
    sets = loader.make_sets(Path(scratch), num_real, 32, 3)
    resident = {
        name: load_resident(LocatedSet.open(folder), "cpu")
        for name, folder in zip(("real", "synthetic"), sets["records"])
    }
    torch.set_num_threads(1)
    rounds = [loader.loader_round(sets, resident, resident["real"].images) for _ in range(rounds)]
print(json.dumps({path: [r[path][0] for r in rounds] for path in rounds[0]}))
"""


# --what scaling: per worker (one process: later-pass PNG, records, resident) and what the main
# process receives through 1 and 2 DataLoader workers, decoded cache warm, alternating paths
SCALING = """
import json, sys, tempfile
from pathlib import Path
checkout, rounds, num_real = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [checkout, checkout + "/benchmarks"]
import torch
from torch.utils.data import DataLoader
import loader
from sio.train.resident import ResidentBatches
from sio.train import stream
from sio.train.stream import MixedBatches, SharedEpoch
STEPS, WARMUP = 300, 12
PATHS = [("resident", 0), ("records", 0), ("png", 0), ("records", 1), ("records", 2),
         ("png", 1), ("png", 2)]
with tempfile.TemporaryDirectory() as scratch:
    root = Path(scratch)
    sets = loader.make_sets(root, num_real, 32, 3)
    resident = loader.resident_of(sets)
    cache = str(root / "cache")
    whole = -(-max(num_real // loader.N_REAL, num_real // 2 // loader.N_SYN)) + 2
    for encoding in ("png", "records"):  # one whole pass of both sets: the cache is warm
        for _ in MixedBatches(loader.spec_for(*sets[encoding], whole, cache_dir=cache),
                              SharedEpoch(0)):
            pass
    torch.set_num_threads(1)

    def measure(path, workers):
        spec = loader.spec_for(*sets["records" if path == "resident" else path],
                               STEPS + WARMUP, cache_dir=cache)
        if path == "resident":
            counts = {"real": (loader.N_REAL,), "synthetic": (loader.N_SYN,)}
            batches = ResidentBatches(spec, SharedEpoch(0), resident, counts)
        else:
            batches = MixedBatches(spec, SharedEpoch(0))
            if workers and hasattr(stream, "StreamLoader"):  # items of several steps
                batches = stream.StreamLoader(batches, num_workers=workers)
            elif workers:
                batches = DataLoader(batches, batch_size=None, num_workers=workers)
        wall, cpu, images = loader.timed(batches, WARMUP)
        return images / wall, images / cpu

    out = {}
    for number in range(rounds):
        for path, workers in PATHS if number % 2 == 0 else PATHS[::-1]:
            wall, cpu = measure(path, workers)
            out.setdefault(f"{path} w{workers}", []).append(wall)
            if not workers:  # one process: images per CPU second too (less moved by load)
                out.setdefault(f"{path} w0 per CPU-s", []).append(cpu)
print(json.dumps(out))
"""


def git_head(checkout: Path) -> str:
    """The checkout's commit (and "+changes" when its work tree differs from it)."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    if not (checkout / ".git").exists():  # an exported tree (git archive): its folder
        return checkout.name
    commit = git("rev-parse", "--short", "HEAD")
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def one_process(
    checkout: Path, rounds: int, num_real: int, code: str = ONE_PROCESS
) -> dict[str, list[float]]:
    """images/s per path over ``rounds`` rounds, measured in a fresh process of ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(checkout), str(rounds), str(num_real)],
        capture_output=True,
        text=True,
        env=env,
        cwd=checkout,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise SystemExit(f"loader_ab: a process of {checkout} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(runs: list[dict], paths: list[str]) -> dict:
    """Per path: this checkout's median over the other's, and the median of the per-pair ratios
    (the k-th process of each checkout, adjacent in the run; the median of its rounds)."""
    mine = [r["images_per_s"] for r in runs if r["who"] == "this"]
    other = [r["images_per_s"] for r in runs if r["who"] == "other"]
    out = {}
    for path in paths:
        all_mine = [v for r in mine for v in r[path]]
        all_other = [v for r in other for v in r[path]]
        pairs = [
            statistics.median(a[path]) / statistics.median(b[path])
            for a, b in zip(mine, other, strict=False)
        ]
        out[path] = {
            "this_median": statistics.median(all_mine),
            "other_median": statistics.median(all_other),
            "ratio_of_medians": statistics.median(all_mine) / statistics.median(all_other),
            "median_pair_ratio": statistics.median(pairs),
            "pair_ratios": pairs,
        }
    return out


def markdown(table: dict, this: str, other: str) -> str:
    lines = [
        f"| path | {this} images/s | {other} images/s | ratio of medians | median pair ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for path, row in table.items():
        lines.append(
            f"| {path} | {row['this_median']:,.0f} | {row['other_median']:,.0f} | "
            f"{row['ratio_of_medians']:.3f} | {row['median_pair_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout's folder")
    parser.add_argument("--processes", type=int, default=3, help="processes per checkout")
    parser.add_argument("--rounds", type=int, default=2, help="loader rounds per process")
    parser.add_argument("--num-real", type=int, default=20_000)
    parser.add_argument("--out", default="loader_ab.json", help="file name in benchmarks/results")
    parser.add_argument(
        "--what",
        choices=("round", "scaling"),
        default="round",
        help="round: loader.py's loader_round; scaling: per worker and 1, 2 DataLoader workers",
    )
    args = parser.parse_args()
    other = args.other.resolve()
    if not (other / "benchmarks" / "loader.py").is_file():
        raise SystemExit(f"loader_ab: {other} is not a checkout of sio (no benchmarks/loader.py)")
    who = {"this": (HERE, git_head(HERE)), "other": (other, git_head(other))}
    out_path = HERE / "benchmarks" / "results" / args.out
    result = {
        "what": __doc__.splitlines()[0],
        "machine": describe_machine(),
        "checkouts": {k: commit for k, (_, commit) in who.items()},
        "processes": args.processes,
        "rounds_per_process": args.rounds,
        "num_real": args.num_real,
        "what_measured": args.what,
        "load_before": os.getloadavg(),
        "runs": [],
        "complete": False,
    }
    for k in range(args.processes):
        for name in ("this", "other") if k % 2 == 0 else ("other", "this"):
            folder, commit = who[name]
            start = time.perf_counter()
            code = SCALING if args.what == "scaling" else ONE_PROCESS
            rates = one_process(folder, args.rounds, args.num_real, code)
            result["runs"].append({"who": name, "checkout": commit, "images_per_s": rates})
            medians = ", ".join(f"{p} {statistics.median(v):,.0f}" for p, v in rates.items())
            print(f"process {k + 1} {name} ({commit}): {medians} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
            write_json_atomic(out_path, result)
    paths = list(result["runs"][0]["images_per_s"])
    result["table"] = ratios(result["runs"], paths)
    result["load_after"] = os.getloadavg()
    result["complete"] = True
    write_json_atomic(out_path, result)
    print(markdown(result["table"], who["this"][1], who["other"][1]))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
