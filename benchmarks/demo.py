"""Time a cold `sio run` of the default pipeline.yaml (every stage computed, nothing cached).

Prints the wall time of each stage, the synthetic set's label agreement and the machine, and
writes them to benchmarks/results/demo.json. Usage: python benchmarks/demo.py [pipeline.yaml]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from sio.core.environment import describe_machine
from sio.pipeline.config import load_pipeline
from sio.pipeline.run import run_pipeline
from sio.shardset import read_manifest


def main() -> None:
    pipeline = sys.argv[1] if len(sys.argv) > 1 else "pipeline.yaml"
    config = load_pipeline(pipeline)
    with tempfile.TemporaryDirectory() as scratch:
        config = dataclasses.replace(config, output_dir=str(Path(scratch) / "run"))
        start = time.perf_counter()
        table = run_pipeline(config)
        wall = time.perf_counter() - start
        out = Path(config.output_dir)
        timings = json.loads((out / "timings.json").read_text())
        synthetic = out / "synthetic" / config.generator.key
        quality = read_manifest(synthetic).provenance["quality"]  # the job's label agreement
        distance = json.loads((out / "quality" / config.generator.key / "fid.json").read_text())
        report = json.loads((out / "report.json").read_text())
    result = {
        "pipeline": pipeline,
        "wall_s": wall,
        "stage_s": timings,
        "machine": describe_machine(),
        "label_agreement": quality["label_agreement"],
        "fd_classifier": distance["value"] if distance["metric"] == "fd_classifier" else None,
        "generate_images_per_s": config.generate.num_images
        / timings[f"generate {config.generator.key}"],
        "seeds": list(config.seeds),
        "report": report,
    }
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(
        f"\ncold sio run: {wall:.1f} s wall on {result['machine']['cpus']} CPUs "
        f"(torch {torch.__version__}); label agreement {100 * result['label_agreement']:.1f}%"
    )


if __name__ == "__main__":
    main()
