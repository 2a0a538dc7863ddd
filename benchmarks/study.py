"""Time a cold `sio run study.yaml` (every stage computed) and keep its report as the docs example.

Runs the study into an empty output folder, prints the stage times and the machine, writes them to
benchmarks/results/study.json, and copies report.md, study_results.json and the plots to
docs/study/. Usage: python benchmarks/study.py [study.yaml] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from sio.core.environment import describe_machine
from sio.pipeline.config import load_pipeline
from sio.pipeline.run import run_pipeline
from sio.pipeline.study import expand_study

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", nargs="?", default="study.yaml")
    parser.add_argument("--out", default=None, help="output folder (default: the file's)")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "study"))
    args = parser.parse_args()
    config = load_pipeline(args.study)
    out = Path(args.out or config.output_dir)
    if out.exists():
        shutil.rmtree(out)  # cold: nothing cached
    config = dataclasses.replace(config, output_dir=str(out))
    start = time.perf_counter()
    text = run_pipeline(config)
    wall = time.perf_counter() - start
    study = expand_study(config)
    result = {
        "study": args.study,
        "wall_s": wall,
        "points": len(study.points),
        "seeds": list(config.seeds),
        "trainings": (len(study.points) + 1) * len(config.seeds),
        "stage_s": json.loads((out / "timings.json").read_text()),
        "machine": describe_machine(),
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    figures = [p.name for pattern in ("*.png", "*.pdf", "*.svg") for p in out.glob(pattern)]
    for old in [*docs.glob("*.png"), *docs.glob("*.pdf"), *docs.glob("*.svg")]:
        old.unlink()  # a figure the current code no longer draws
    for name in ["study_results.json", *figures]:
        shutil.copyfile(out / name, docs / name)
    made = (
        f"_Made by `python benchmarks/study.py {args.study}` (a cold `sio run {args.study}`: "
        f"{wall / 60:.1f} min wall on {result['machine']['cpus']} CPUs, torch "
        f"{torch.__version__}); `sio report {out}` rebuilds this report from the run folders._"
    )
    (docs / "report.md").write_text(made + "\n\n" + (out / "report.md").read_text())
    print(text)
    print(
        f"\ncold sio run {args.study}: {wall / 60:.1f} min wall, {result['trainings']} "
        f"classifier trainings, on {result['machine']['cpus']} CPUs (torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
