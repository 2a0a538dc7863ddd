"""The streaming SIO trainer: exact real/synthetic batches, SGD + Nesterov, per-step cosine.

``alpha = 1`` is the real-only baseline with the same batch size and step count. The training
method (``config.method``, see methods.py) supplies the loss, and possibly a batch transform,
extra shard sets outside the ID part, its classifier head, parameter groups and the schedule; it
never changes the batch's real/synthetic composition. A checkpoint (``checkpoint.pt``) is
written atomically after every epoch with everything needed to resume (model, method state,
optimizer, schedule, epoch, step) and to use it (architecture, head, method, classes,
normalisation, the training config); ``log.jsonl`` has one line per epoch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sio.config import TrainConfig, check_alpha, to_dict
from sio.seeding import derive_seed
from sio.shards import Manifest, read_manifest, shard_urls

from .methods import METHODS, MethodContext, build_method
from .mixing import batch_counts, steps_per_epoch
from .models import build_classifier
from .sources import extra_sources, synthetic_urls
from .stream import MixedBatches, MixSpec, SharedEpoch

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "sio-checkpoint/1"


class Objective(nn.Module):
    """The classifier and its training method, trained together by one optimiser."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: dict):
        return self.method.loss(self.model, batch)


def _save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(classifier in eval mode, checkpoint dict) from a ``checkpoint.pt`` or its run folder.

    ``state["method"]`` names the training method and ``state["head"]`` the classifier head
    (``godin`` for G-ODIN, whose classifier has ``godin_score``); older checkpoints are ``ce``
    with a linear head."""
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
    state.setdefault("method", "ce")
    model = build_classifier(
        state["model"],
        in_channels=state["channels"],
        num_classes=len(state["class_names"]),
        mean=state["pixel_mean"],
        std=state["pixel_std"],
        head=state.get("head", "linear"),
        **state.get("head_options", {}),
    )
    model.load_state_dict(state["model_state"])
    return model.to(device).eval(), state


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
    syn_urls = synthetic_urls(real_manifest, synthetic, alpha, n_syn)
    steps = steps_per_epoch(real_manifest.num_samples, config.batch_size)
    model, method = build_objective(config, real_manifest, seed, steps, device)
    spec = batch_spec(real, syn_urls, (n_real, n_syn), seed, config, method)
    epochs = method.total_epochs()
    optimizer, schedule = _optimiser(config, model, method)
    state = _header(real_manifest, config, alpha, seed, real, synthetic)
    start_epoch = _resume(out / CHECKPOINT, state, model, method, optimizer, schedule, device)
    epoch_value = SharedEpoch(start_epoch)
    loader = DataLoader(
        MixedBatches(spec, epoch_value),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    objective = Objective(model, method)
    for epoch in range(start_epoch, epochs):
        epoch_value.set(epoch)
        state["history"].append(
            _train_epoch(objective, loader, optimizer, schedule, epoch, steps, device)
        )
        state.update(
            epoch=epoch + 1,
            step=(epoch + 1) * steps,
            complete=epoch + 1 == epochs,
            model_state=model.state_dict(),
            method_state=method.state_dict(),
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
        )
        _save_atomic(state, out / CHECKPOINT)
        # The log is rewritten from the checkpoint's history: after a crash and a resume it
        # holds each epoch exactly once.
        lines = "".join(json.dumps(record) + "\n" for record in state["history"])
        _write_atomic(out / "log.jsonl", lines)
    return out / CHECKPOINT


def batch_spec(real, syn_urls, counts: tuple[int, int], seed: int, config, method) -> MixSpec:
    """The stream's definition: the exact (n_real, n_syn) ``counts``, the recipe's
    augmentation, and the method's extra shard sets and batch transform."""
    real_manifest = read_manifest(real)
    return MixSpec(
        real_urls=tuple(shard_urls(real, real_manifest)),
        synthetic_urls=tuple(syn_urls),
        n_real=counts[0],
        n_syn=counts[1],
        channels=real_manifest.channels,
        image_size=tuple(real_manifest.image_size),
        steps_per_epoch=steps_per_epoch(real_manifest.num_samples, config.batch_size),
        seed=seed,
        shuffle_buffer=config.shuffle_buffer,
        crop_padding=config.crop_padding,
        hflip=config.hflip,
        resized_crop=config.resized_crop,
        extras=extra_sources(real_manifest, method.inputs(config), method.sources()),
        transform=method.transform(),
    )


def build_objective(config: TrainConfig, manifest: Manifest, seed: int, steps: int, device):
    """(classifier with the method's head, method), each initialised from its own derived seed
    without touching the global RNG state; ``steps`` is the number of steps per epoch."""
    method_class = METHODS.get(config.method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_classifier(
            config.model,
            in_channels=manifest.channels,
            num_classes=len(manifest.class_names),
            mean=manifest.pixel_mean,
            std=manifest.pixel_std,
            head=method_class.head,
            **method_class.head_options(config),
        )
    context = MethodContext(
        num_classes=len(manifest.class_names),
        feature_dim=model.backbone.feature_dim,
        seed=seed,
        steps_per_epoch=steps,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "method-init"))
        method = build_method(config, context)
    return model.to(device), method.to(device)


def _optimiser(config: TrainConfig, model, method):
    groups = method.param_groups(model)
    own = list(method.parameters())
    if own:
        groups.append({"params": own})
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_factor())


def _header(manifest: Manifest, config, alpha, seed, real, synthetic) -> dict:
    method_class = METHODS.get(config.method)
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "method": config.method,
        "head": method_class.head,
        "head_options": method_class.head_options(config),
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


def _resume(path: Path, state: dict, model, method, optimizer, schedule, device) -> int:
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
    method.load_state_dict(previous.get("method_state", {}))
    optimizer.load_state_dict(previous["optimizer"])
    schedule.load_state_dict(previous["schedule"])
    state["history"] = list(previous["history"])
    return previous["epoch"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _train_epoch(objective, loader, optimizer, schedule, epoch, steps, device) -> dict:
    """One epoch of ``objective`` (classifier + method) over ``loader``; the epoch's log line."""
    objective.train()
    totals = {"loss": 0.0, "correct": 0, "real": 0, "synthetic": 0, "batches": 0}
    start = time.perf_counter()
    for batch in tqdm(loader, total=steps, desc=f"epoch {epoch}", unit="batch", leave=False):
        batch = _to_device(batch, device)
        labels = batch["labels"]
        loss, logits = objective(batch)
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
