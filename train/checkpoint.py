"""The run's checkpoint: written atomically after every epoch, resumed from, loaded for use.

``checkpoint.pt`` holds what resuming needs (model, method state, optimizer, schedule, every
rank's RNG states, epoch, step) and what using the classifier needs (architecture, head, method,
classes, normalisation, the training config). Data order needs no state: it derives from (seed,
epoch, rank, worker, source), so a resumed run repeats the batches of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sio.core.config import to_dict
from sio.core.definition import require_same
from sio.core.files import sha256_file
from sio.core.resumable import read_checkpoint as read_resumable
from sio.core.storage import as_location
from sio.train.config import TrainConfig
from sio.train.methods import METHODS
from sio.train.models import build_classifier
from sio.train.stage import RESUMABLE_CHANGES

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "sio-checkpoint/1"
# what using a checkpoint's classifier reads from it
MODEL_KEYS = ("model", "channels", "class_names", "pixel_mean", "pixel_std", "model_state")


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """The dict of the checkpoint file ``path``: read as tensors only (a pickle that would run
    anything is refused, nothing in it runs) and refused, naming the path, unless it is an sio
    checkpoint holding a model."""
    state = read_resumable(path, format=CHECKPOINT_FORMAT, what="an sio checkpoint", device=device)
    missing = [key for key in MODEL_KEYS if key not in state]
    if missing or not isinstance(state["model_state"], dict):
        what = f"without {', '.join(missing)}" if missing else "whose model_state is no dict"
        raise ValueError(f"{path}: an sio checkpoint {what}; it cannot be used")
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(classifier in eval mode, checkpoint dict) from a ``checkpoint.pt`` or its run folder.

    ``state["method"]`` names the training method and ``state["head"]`` the classifier head
    (``godin`` for G-ODIN, whose classifier has ``godin_score``); older checkpoints are ``ce``
    with a linear head."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint; `sio train --out DIR` writes DIR/{CHECKPOINT}"
        )
    state = read_checkpoint(path, device)
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
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:  # missing, unexpected or misshapen weights: the first of them
        first = str(err).replace("\n\t", " ").splitlines()[0]
        raise ValueError(f"{path}: its weights do not fit its model: {first}") from None
    return model.to(device).eval(), state


@dataclass(frozen=True)
class RunInfo:
    """What another stage may know of a trained classifier (instead of its checkpoint's keys)."""

    path: Path  # the checkpoint file
    sha256: str
    model: str  # the backbone's registry name
    method: str
    head: str
    channels: int
    image_size: tuple[int, int] | None  # None: a checkpoint from before it was recorded
    class_names: tuple[str, ...]
    alpha: float
    seed: int
    complete: bool
    # the training recipe: every config field that changes the weights (not alpha or seed),
    # the backbone and the real set's manifest; {} for a checkpoint that records no config
    recipe: dict = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_fits(self, what: str, image_size, class_names) -> None:
        """Refuse to apply this classifier to ``what`` (a set of ``image_size`` images of
        ``class_names``) when it was trained on another image size or class list."""
        if self.image_size is not None and tuple(image_size) != tuple(self.image_size):
            raise ValueError(
                f"{self.path}: trained on {self.image_size[0]}x{self.image_size[1]} images, "
                f"but {what} holds {image_size[0]}x{image_size[1]}"
            )
        if tuple(class_names) != self.class_names:
            raise ValueError(
                f"{self.path}: trained on {self.num_classes} classes {list(self.class_names)}, "
                f"but {what} has {len(class_names)}: {list(class_names)}"
            )


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the checkpoint inside a run folder."""
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() else path


def load_classifier(path: str | Path, device: str | torch.device = "cpu"):
    """(classifier in eval mode, ``RunInfo``) from a ``checkpoint.pt`` or its run folder: the
    stage API that evaluation and generation use."""
    path = checkpoint_file(path)
    model, state = load_checkpoint(path, device)
    image_size = state.get("image_size")
    info = RunInfo(
        path=path,
        sha256=sha256_file(path),
        model=state["model"],
        method=state["method"],
        head=state.get("head", "linear"),
        channels=state["channels"],
        image_size=None if image_size is None else tuple(image_size),
        class_names=tuple(state["class_names"]),
        alpha=state["alpha"],
        seed=state["seed"],
        complete=bool(state.get("complete", True)),
        recipe=recipe(state),
    )
    return model, info


def recipe(state: dict) -> dict:
    """What made a checkpoint's weights besides alpha, seed and the synthetic set: its training
    config (``RESUMABLE_CHANGES`` left out), backbone and real set; {} if it has no config."""
    if "config" not in state:
        return {}
    definition = _run_definition(state)
    return {**definition["config"], "model": state["model"], "real": state.get("real_manifest")}


def manifest_sha256(manifest) -> str:
    """Which shard set a run was trained on: the manifest's ``content_sha256`` (its shards), so
    a quality figure recorded in the manifest later does not make it "another set"."""
    return manifest.content_sha256


def header(manifest, config, alpha, seed, real, synthetic, world_size: int, syn_manifest=None):
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
        "world_size": world_size,
        "real": as_location(real),
        "synthetic": None if synthetic is None else as_location(synthetic),
        "real_manifest": manifest_sha256(manifest),
        "synthetic_manifest": None if syn_manifest is None else manifest_sha256(syn_manifest),
        "epoch": 0,
        "step": 0,
        "complete": False,
        "history": [],
    }


def _run_definition(state: dict) -> dict:
    # a field added to TrainConfig after a checkpoint was written ran at its default there
    config = {**to_dict(TrainConfig()), **state["config"]}
    config = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    return {
        "config": config,
        "alpha": state["alpha"],
        "seed": state["seed"],
        "model": state["model"],
    }


def check_same_run(path: Path, previous: dict, state: dict) -> None:
    """Refuse to resume a checkpoint made with another config, alpha, seed or model (each
    changes the batches or the schedule), or with other real or synthetic shard sets (by their
    manifests' sha256). The number of ranks and workers may change: the global batches do not."""
    require_same(
        f"{path} was trained with another definition",
        _run_definition(previous),
        _run_definition(state),
        remedy="use another output folder",
    )
    for what in ("real", "synthetic"):
        before, now = previous.get(f"{what}_manifest"), state.get(f"{what}_manifest")
        if before is not None and before != now:
            raise ValueError(
                f"{path} was trained on the {what} set {previous.get(what)} (manifest sha256 "
                f"{before}), not {state.get(what)} (manifest sha256 {now}); use another --out"
            )
