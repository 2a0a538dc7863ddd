"""What it takes for the built-in DDPM to pass the per-class audit on mnist5k (issue 27).

Trains one DDPM variant on mnist5k's ID train set with sio's own training step
(sio.generate.ddpm.train: ``make_plan`` + ``train_step``, the loop ``train_ddpm`` runs) and, at
the given steps, samples 50 images per class from the EMA weights with each sampler and judges
them with a real-trained cnn28 baseline (the classifier the audit uses): per-class and overall
label agreement, with the training's CPU seconds so far. Every image is seeded by its index, so
the variants are judged on the same seeds.

    python benchmarks/mnist5k_generator.py WORK NAME THREADS 'JSON'

WORK holds the benchmark (``sio shard mnist5k --order shuffled``) and the judge
(``sio train --config examples/mnist5k.yaml --alpha 1 --seed 0``), made first if missing; JSON
gives the variant: ``model`` (DDPMModelConfig fields), ``train`` (DDPMTrainConfig fields),
``evals`` (steps to judge at), ``samplers`` ({name: SamplerConfig fields}) and ``schedule``
(``cosine``: sio's warm-up + cosine over ``train.steps``, what a real training does; or
``constant``: the warm-up, then the base rate, to read one curve over many step counts).
One JSON line per judged step goes to WORK/NAME.jsonl and the EMA weights to
WORK/NAME-ema-STEP.pt. Run two variants at once with THREADS 1 each on a 2-core machine.

    python benchmarks/mnist5k_generator.py weights WEIGHTS JUDGE THREADS 'JSON'

judges trained weights (a DDPM folder, e.g. ``sio run``'s generator/ddpm/weights) under each
sampler of JSON ({name: SamplerConfig fields}) the same way, one JSON line per sampler.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from sio.generate.audit import judge_batch
from sio.generate.config import (
    DDPMModelConfig,
    DDPMTrainConfig,
    GeneratorConfig,
    SamplerConfig,
)
from sio.generate.ddpm.model import DDPMGenerator
from sio.generate.ddpm.train import make_plan, train_step
from sio.shardset import iter_batches, read_manifest
from sio.train import load_classifier

EXAMPLE = Path(__file__).parent.parent / "examples" / "mnist5k.yaml"
PER_CLASS = 50
DEFAULT_SAMPLERS = {
    "ddim20": {"kind": "ddim", "steps": 20},
    "ddim20g2": {"kind": "ddim", "steps": 20, "guidance": 2.0},
}


def prepare(work: Path) -> tuple[Path, Path]:
    """(ID train set, judge checkpoint) under ``work``, made with sio's CLI if missing."""
    data, judge = work / "data", work / "judge"
    sio = [sys.executable, "-m", "sio"]
    if not (data / "id_train" / "manifest.json").is_file():
        subprocess.run([*sio, "shard", "mnist5k", "--out", data, "--order", "shuffled",
                        "--shard-size", "256"], check=True)  # fmt: skip
    if not (judge / "checkpoint.pt").is_file():
        subprocess.run([*sio, "train", "--config", EXAMPLE, "--real", data / "id_train",
                        "--alpha", "1", "--seed", "0", "--out", judge], check=True)  # fmt: skip
    return data / "id_train", judge / "checkpoint.pt"


def judged(plan, state, samplers: dict, classifier, names) -> dict:
    """Per sampler: the agreement of the training's EMA weights (``agreement``)."""
    out = {}
    for key, settings in samplers.items():
        generator = DDPMGenerator(
            copy.deepcopy(state.ema),
            plan.scheduler,
            class_names=names,
            image_size=plan.data.shape[-1],
            channels=plan.data.shape[1],
            null_class=len(names),
            sampler=SamplerConfig(**settings),
        )
        out[key] = agreement(generator, classifier, len(names))
    return out


def agreement(generator, classifier, num_classes: int) -> dict:
    """Overall and per-class agreement of PER_CLASS images per class, image i seeded by i."""
    labels = torch.arange(num_classes).repeat_interleave(PER_CLASS)
    seeds = list(range(len(labels)))
    images = torch.cat(
        [generator.sample_seeds(labels[i : i + 150], seeds[i : i + 150])
         for i in range(0, len(labels), 150)]
    )  # fmt: skip
    _, probs = judge_batch(classifier, images)
    hits = (probs.argmax(1) == labels).float().view(num_classes, PER_CLASS).mean(1)
    return {"overall": hits.mean().item(), "per_class": [round(v, 3) for v in hits.tolist()]}


def judge_weights(weights: Path, judge: Path, samplers: dict) -> None:
    """``weights`` (a trained DDPM folder) judged under each sampler: one JSON line each."""
    classifier, _ = load_classifier(judge)
    for key, settings in samplers.items():
        generator = DDPMGenerator.from_pretrained(weights, sampler=SamplerConfig(**settings))
        line = {"weights": str(weights), "sampler": key, "settings": settings}
        print(json.dumps({**line, **agreement(generator, classifier, generator.num_classes)}))


def main() -> None:
    if sys.argv[1] == "weights":  # weights WEIGHTS JUDGE THREADS 'JSON samplers'
        torch.set_num_threads(int(sys.argv[4]))
        judge_weights(Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[5]))
        return
    work, name, threads, spec = (
        Path(sys.argv[1]),
        sys.argv[2],
        int(sys.argv[3]),
        json.loads(sys.argv[4]),
    )
    torch.set_num_threads(threads)
    real, judge = prepare(work)
    batches = list(iter_batches(real, 4096))
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    names = read_manifest(real).class_names
    config = GeneratorConfig(
        name="ddpm",
        model=DDPMModelConfig(**spec.get("model", {})),
        train=DDPMTrainConfig(**spec.get("train", {})),
    )
    plan, state = make_plan(images, labels, names, config, "cpu")
    if spec.get("schedule", "cosine") == "constant":
        warmup = max(1, min(100, config.train.steps // 10))
        plan = dataclasses.replace(plan, lr_factor=lambda s: min(1.0, (s + 1) / warmup))
    classifier, _ = load_classifier(judge)
    samplers = spec.get("samplers", DEFAULT_SAMPLERS)
    evals = set(spec.get("evals", [config.train.steps]))
    log = (work / f"{name}.jsonl").open("a")
    train_s = 0.0
    while state.step < config.train.steps:
        start = time.perf_counter()
        train_step(plan, state)
        train_s += time.perf_counter() - start
        if state.step in evals:
            loss = state.loss_sum.item() / max(state.window, 1)
            state.loss_sum.zero_()
            state.window = 0
            line = {"name": name, "spec": spec, "step": state.step, "train_s": round(train_s, 1),
                    "threads": threads, "loss_since_last": loss,
                    **judged(plan, state, samplers, classifier, names)}  # fmt: skip
            print(json.dumps(line), flush=True)
            log.write(json.dumps(line) + "\n")
            log.flush()
            torch.save(state.ema.state_dict(), work / f"{name}-ema-{state.step}.pt")


if __name__ == "__main__":
    main()
