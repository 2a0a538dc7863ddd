"""Baseline vs +SIO on the embedded mnist5k benchmark: `sio run examples/mnist5k.yaml`, five seeds.

Runs the pipeline into OUT (default runs/mnist5k-bench; a rerun resumes, skipping every stage
already done), then writes benchmarks/results/mnist5k.json: the report (mean ± std over seeds per
arm and detector), each run's ID accuracy, the synthetic set's label agreement and distance,
the stage times and the machine. Usage: nice -n 10 python benchmarks/mnist5k.py [OUT]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from sio.core.environment import describe_machine
from sio.pipeline.config import load_pipeline
from sio.pipeline.run import run_pipeline

PIPELINE = Path(__file__).parent.parent / "examples" / "mnist5k.yaml"


# what each detector's score reads (the issue-27 question: does +SIO move them alike?)
FAMILIES = {
    "logit/softmax": ("openmax", "msp", "tempscale", "odin", "ebo", "mls", "klm", "gradnorm"),
    "activation shaping + energy": ("react", "dice"),
    "feature space": ("knn", "vim"),
}


def family_deltas(report: dict) -> dict:
    """Per detector family and group (near, far): each arm's mean ± std over seeds of the
    seed's AUROC averaged over the family, and +SIO - baseline paired by seed (Δ, 95 % CI, p)."""
    from sio.evaluate.arms import mean_std
    from sio.evaluate.report_tables import baseline_alpha, paired_delta

    base = baseline_alpha(report)
    out = {}
    for family, detectors in FAMILIES.items():
        for group in ("near", "far"):
            stats = {}
            for alpha, arm in report.items():
                present = [d for d in detectors if d in arm["metrics"]]
                values = [arm["metrics"][d][group]["mean"]["auroc"]["values"] for d in present]
                stats[alpha] = mean_std([sum(v) / len(v) for v in zip(*values, strict=True)])
            row = {"detectors": present, "arms": stats}
            for alpha in report:
                if alpha != base:
                    row[f"delta_{alpha}"] = paired_delta(
                        stats[alpha], stats[base], report[alpha]["seeds"], report[base]["seeds"]
                    )
            out[f"{family} / {group}"] = row
    return out


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mnist5k-bench")
    config = dataclasses.replace(load_pipeline(PIPELINE), output_dir=str(out))
    start = time.perf_counter()
    table = run_pipeline(config)
    wall = time.perf_counter() - start
    study = json.loads((out / "study.json").read_text())
    per_run = {
        run["name"]: json.loads((out / run["evaluate"] / "results.json").read_text())["id_acc"]
        for run in study["runs"]
    }
    result = {
        "pipeline": str(PIPELINE.relative_to(PIPELINE.parent.parent)),
        "wall_s_this_call": wall,
        "stage_s": json.loads((out / "timings.json").read_text()),
        "machine": describe_machine(),
        "seeds": list(config.seeds),
        "id_acc_per_run": per_run,
        "generators": study["generators"],
        "report": json.loads((out / "report.json").read_text()),
    }
    result["families"] = family_deltas(result["report"])
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "mnist5k.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
