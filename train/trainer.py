"""The streaming SIO trainer: exact real/synthetic batches, SGD + Nesterov, per-step cosine.

``alpha = 1`` is the real-only baseline with the same batch size and step count. A checkpoint
(``checkpoint.pt``) is written atomically after every epoch with everything needed to resume
(model, optimizer, schedule, epoch, step) and to use it (architecture, classes, normalisation,
the training config); ``log.jsonl`` has one line per epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sio.shards import Manifest, read_manifest, shard_urls
from torch.utils.data import DataLoader
from tqdm import tqdm

from sio.config import TrainConfig, check_alpha, to_dict
from sio.seeding import derive_seed

from .mixing import batch_counts, steps_per_epoch
from .models import build_classifier
from .stream import MixedBatches, MixSpec, SharedEpoch

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "sio-checkpoint/1"


def _check_compatible(real: Manifest, synthetic: Manifest) -> None:
    pairs = {
        "class_names": (real.class_names, synthetic.class_names),
        "channels": (real.channels, synthetic.channels),
        "image_size": (tuple(real.image_size), tuple(synthetic.image_size)),
    }
    for name, (real_value, syn_value) in pairs.items():
        if real_value != syn_value:
            raise ValueError(
                f"real and synthetic shard sets differ in {name}: {real_value} vs {syn_value}"
            )


def _save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(classifier in eval mode, checkpoint dict) from a ``checkpoint.pt`` or its run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint; `sio train --out DIR` writes DIR/{CHECKPOINT}"
        )
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an sio checkpoint (format {CHECKPOINT_FORMAT!r})")
    model = build_classifier(
        state["model"],
        in_channels=state["channels"],
        num_classes=len(state["class_names"]),
        mean=state["pixel_mean"],
        std=state["pixel_std"],
    )
    model.load_state_dict(state["model_state"])
    return model.to(device).eval(), state


def _cosine(total_steps: int):
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def train_classifier(
    *,
    real: str | Path,
    synthetic: str | Path | None,
    alpha: float,
    seed: int,
    config: TrainConfig,
    out: str | Path,
    device: str = "cpu",
) -> Path:
    """Train one classifier; resumes from ``out/checkpoint.pt`` if an unfinished one is there."""
    check_alpha(alpha)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    real_manifest = read_manifest(real)
    n_real, n_syn = batch_counts(config.batch_size, alpha)
    syn_urls = _synthetic_urls(real_manifest, synthetic, alpha, n_syn)
    steps = steps_per_epoch(real_manifest.num_samples, config.batch_size)
    model, optimizer, schedule = _build(config, real_manifest, seed, config.epochs * steps, device)
    state = _header(real_manifest, config, alpha, seed, real, synthetic)
    start_epoch = _resume(out / CHECKPOINT, state, model, optimizer, schedule, device)
    epoch_value = SharedEpoch(start_epoch)
    spec = MixSpec(
        real_urls=tuple(shard_urls(real, real_manifest)),
        synthetic_urls=tuple(syn_urls),
        n_real=n_real,
        n_syn=n_syn,
        channels=real_manifest.channels,
        image_size=tuple(real_manifest.image_size),
        steps_per_epoch=steps,
        seed=seed,
        shuffle_buffer=config.shuffle_buffer,
        crop_padding=config.crop_padding,
        hflip=config.hflip,
    )
    loader = DataLoader(
        MixedBatches(spec, epoch_value),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    for epoch in range(start_epoch, config.epochs):
        epoch_value.set(epoch)
        state["history"].append(
            _train_epoch(model, loader, optimizer, schedule, epoch, steps, device)
        )
        state.update(
            epoch=epoch + 1,
            step=(epoch + 1) * steps,
            complete=epoch + 1 == config.epochs,
            model_state=model.state_dict(),
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
        )
        _save_atomic(state, out / CHECKPOINT)
        # The log is rewritten from the checkpoint's history: after a crash and a resume it
        # holds each epoch exactly once.
        lines = "".join(json.dumps(record) + "\n" for record in state["history"])
        _write_atomic(out / "log.jsonl", lines)
    return out / CHECKPOINT


def _synthetic_urls(real_manifest, synthetic, alpha, n_syn) -> list[str]:
    if not n_syn:
        return []
    if synthetic is None:
        raise ValueError(
            f"alpha = {alpha} puts {n_syn} synthetic samples in every batch, "
            "but no synthetic shard set was given"
        )
    syn_manifest = read_manifest(synthetic)
    _check_compatible(real_manifest, syn_manifest)
    return shard_urls(synthetic, syn_manifest)


def _build(config: TrainConfig, manifest: Manifest, seed: int, total_steps: int, device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_classifier(
            config.model,
            in_channels=manifest.channels,
            num_classes=len(manifest.class_names),
            mean=manifest.pixel_mean,
            std=manifest.pixel_std,
        )
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total_steps))
    return model, optimizer, schedule


def _header(manifest: Manifest, config, alpha, seed, real, synthetic) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "channels": manifest.channels,
        "image_size": list(manifest.image_size),
        "class_names": list(manifest.class_names),
        "pixel_mean": list(manifest.pixel_mean),
        "pixel_std": list(manifest.pixel_std),
        "config": to_dict(config),
        "alpha": alpha,
        "seed": seed,
        "real": str(real),
        "synthetic": None if synthetic is None else str(synthetic),
        "epoch": 0,
        "step": 0,
        "complete": False,
        "history": [],
    }


def _resume(path: Path, state: dict, model, optimizer, schedule, device) -> int:
    """Load an earlier checkpoint of the same run into the objects; returns its epoch."""
    if not path.is_file():
        return 0
    previous = torch.load(path, map_location=device, weights_only=True)
    for key in ("config", "alpha", "seed", "model"):
        if previous[key] != state[key]:
            raise ValueError(
                f"{path} was trained with {key} = {previous[key]!r}, "
                f"not {state[key]!r}; use another output folder"
            )
    model.load_state_dict(previous["model_state"])
    optimizer.load_state_dict(previous["optimizer"])
    schedule.load_state_dict(previous["schedule"])
    state["history"] = list(previous["history"])
    return previous["epoch"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _train_epoch(model, loader, optimizer, schedule, epoch, steps, device) -> dict:
    model.train()
    totals = {"loss": 0.0, "correct": 0, "real": 0, "synthetic": 0, "batches": 0}
    start = time.perf_counter()
    for batch in tqdm(loader, total=steps, desc=f"epoch {epoch}", unit="batch", leave=False):
        images, labels = batch["images"].to(device), batch["labels"].to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        n_syn = int(batch["is_synthetic"].sum())
        totals["loss"] += loss.item() * len(labels)
        totals["correct"] += int((logits.argmax(1) == labels).sum())
        totals["synthetic"] += n_syn
        totals["real"] += len(labels) - n_syn
        totals["batches"] += 1
    seen = totals["real"] + totals["synthetic"]
    if totals["batches"] != steps:
        raise RuntimeError(f"epoch {epoch}: {totals['batches']} batches, expected {steps}")
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch,
        "steps": steps,
        "loss": totals["loss"] / seen,
        "train_acc": totals["correct"] / seen,
        "real_seen": totals["real"],
        "synthetic_seen": totals["synthetic"],
        "effective_alpha": totals["real"] / seen,
        "images_per_s": seen / seconds,
        "lr": schedule.get_last_lr()[0],
    }
