"""``sio run``: every stage from one ``pipeline.yaml``, baseline (alpha = 1) against +SIO.

Order: shard the benchmark; train the baseline classifiers (one per seed); train the generator
on the real ID training set; generate the synthetic set (its label agreement judged by the first
baseline classifier); train the +SIO classifiers; evaluate every classifier; report mean ± std
over seeds. Stages meet only in folders under ``output_dir``; each is skipped when it is complete
for the same config and inputs (see sio/stages.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from sio.config import PipelineConfig, to_dict
from sio.files import sha256_file, write_json_atomic
from sio.stages import run_stage


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _arm(alpha: float, seed: int) -> str:
    return f"alpha{alpha:g}-seed{seed}"


def _generator_folder(
    config: PipelineConfig, out: Path, real: Path, real_sha: str, device, force: bool, timings: dict
) -> Path:
    """generator.path if set, else the built-in DDPM trained on the real ID training set."""
    from sio.generate import train_from_shard_set

    if config.generator.path:
        return Path(config.generator.path)
    stage_dir = out / "generator"
    gen_dir = stage_dir / config.generator.name
    run_stage(
        "train generator",
        stage_dir,
        {
            "model": to_dict(config.generator.model),
            "train": to_dict(config.generator.train),
            "real_manifest_sha256": real_sha,
        },
        lambda: train_from_shard_set(real, config.generator, gen_dir, device),
        force=force,
        timings=timings,
    )
    return gen_dir


def run_pipeline(config: PipelineConfig, *, force: bool = False, device: str | None = None) -> str:
    from sio.evaluate import evaluate_checkpoint, report
    from sio.generate import generate_shard_set, weights_fingerprint
    from sio.shards import read_benchmark, read_manifest, write_benchmark
    from sio.train import load_checkpoint, method_inputs, train_classifier

    device = device or default_device()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pipeline.resolved.json", to_dict(config))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    print(f"sio run -> {out} (device {device})", flush=True)

    bench_dir = out / "benchmark"
    run_stage(
        "shard",
        bench_dir,
        {"shard": to_dict(config.shard)},
        lambda: write_benchmark(config.shard, bench_dir),
        force=force,
        timings=timings,
    )
    benchmark = read_benchmark(bench_dir)
    real = benchmark.id_splits["train"]
    real_sha = sha256_file(real / "manifest.json")

    def train_arm(alpha: float, seed: int, synthetic: Path | None, synthetic_sha) -> Path:
        folder = out / "train" / _arm(alpha, seed)
        definition = {
            "train": to_dict(config.train),
            "alpha": alpha,
            "seed": seed,
            "real_manifest_sha256": real_sha,
            "synthetic_manifest_sha256": synthetic_sha,
        }
        for name, path in method_inputs(config.train).items():  # OE outliers, PixMix mixing
            definition[f"{name}_manifest_sha256"] = sha256_file(Path(path) / "manifest.json")
        run_stage(
            f"train {_arm(alpha, seed)}",
            folder,
            definition,
            lambda: train_classifier(
                real=real,
                synthetic=synthetic,
                alpha=alpha,
                seed=seed,
                config=config.train,
                out=folder,
                device=device,
            ),
            force=force,
            timings=timings,
        )
        return folder / "checkpoint.pt"

    checkpoints = {(1.0, seed): train_arm(1.0, seed, None, None) for seed in config.seeds}

    gen_dir = _generator_folder(config, out, real, real_sha, device, force, timings)
    syn_dir = out / "synthetic"
    judge_path = checkpoints[(1.0, config.seeds[0])]

    def generate():
        judge, _ = load_checkpoint(judge_path, device)
        manifest = generate_shard_set(
            gen_dir,
            syn_dir,
            config.generate,
            config.generator,
            classifier=judge,
            classifier_path=str(judge_path),
            class_names=benchmark.class_names,
            device=device,
            image_size=read_manifest(real).image_size[0],
        )
        assert manifest is not None, "a single process writes every shard and the manifest"

    generator_settings = {
        k: v for k, v in to_dict(config.generator).items() if k not in ("model", "train")
    }
    run_stage(
        "generate",
        syn_dir,
        {
            "generate": to_dict(config.generate),
            "generator": generator_settings,
            "generator_weights_sha256": weights_fingerprint(gen_dir),
            "classifier_sha256": sha256_file(judge_path),
        },
        generate,
        force=force,
        timings=timings,
    )
    syn_sha = sha256_file(syn_dir / "manifest.json")
    for seed in config.seeds:
        checkpoints[(config.sio_alpha, seed)] = train_arm(config.sio_alpha, seed, syn_dir, syn_sha)

    eval_folders = []
    for (alpha, seed), checkpoint in checkpoints.items():
        folder = out / "evaluate" / _arm(alpha, seed)
        eval_folders.append(folder)

        def evaluate(folder=folder, checkpoint=checkpoint):
            evaluate_checkpoint(checkpoint, bench_dir, folder, config.evaluate, device=device)

        run_stage(
            f"evaluate {_arm(alpha, seed)}",
            folder,
            {
                "evaluate": to_dict(config.evaluate),
                "checkpoint_sha256": sha256_file(checkpoint),
                "benchmark_sha256": sha256_file(bench_dir / "benchmark.json"),
            },
            evaluate,
            force=force,
            timings=timings,
        )

    table = report(eval_folders, out)
    quality = json.loads((syn_dir / "manifest.json").read_text())["provenance"].get("quality", {})
    timings["total"] = time.perf_counter() - start
    write_json_atomic(out / "timings.json", timings)
    lines = [
        "",
        f"synthetic set: {config.generate.num_images} images, label agreement with the "
        f"baseline classifier {100 * quality.get('label_agreement', float('nan')):.1f}%",
        "",
        table,
        "stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    ]
    return "\n".join(lines)
