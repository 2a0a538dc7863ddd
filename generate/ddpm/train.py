"""Training the built-in conditional DDPM on a real shard set (images held in memory).

Loss: MSE between the noise and the UNet's prediction at a uniformly drawn timestep (Ho et al.
2020), each sample weighted by min(SNR, gamma) / SNR with ``train.min_snr_gamma`` (Hang et al.
2023: faster convergence; 0 = unweighted), with labels dropped to the null class with
probability ``label_dropout`` so that the same network also predicts unconditionally
(classifier-free guidance). The weights saved are an exponential moving average of the trained
ones.

Given a training ``folder``, the training writes ``log.jsonl`` there (a flat JSON line every
``train.log_every`` steps and at the end: ``step``, ``loss`` = the mean over those steps, ``lr``,
``images_per_s``) and, every ``train.checkpoint_every`` steps, ``training.pt`` (model, EMA,
optimizer, RNG states, step, the log so far), written atomically. A rerun on that folder
resumes from it and ends with the same weights, bit for bit, as a training never stopped (the
learning rate is a function of the step alone); a rerun under another training definition is
refused, naming the changed field. ``train_from_shard_set`` writes the weights folder (diffusers'
layout) only when the training is complete, then drops the checkpoint; a complete weights
folder is never trained again.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sio.core.definition import require_same
from sio.core.files import atomic_path, stale_temporaries
from sio.core.progress import progress, progress_write
from sio.core.resumable import (
    LOG,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_log,
)
from sio.core.schedules import warmup_cosine
from sio.core.seeding import torch_generator
from sio.generate.config import GeneratorConfig
from sio.generate.ddpm.model import (
    GENERATOR_FILE,
    DDPMGenerator,
    build_scheduler,
    build_unet,
    read_json_object,
)
from sio.generate.stage import training_definition
from sio.shardset import iter_batches, read_manifest

LABEL_DROPOUT = 0.1
CHECKPOINT = "training.pt"
CHECKPOINT_FORMAT = 1


def _data_definition(images: torch.Tensor, labels: torch.Tensor, class_names) -> dict:
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().data)
    return {
        "shape": list(images.shape),
        "class_names": list(class_names),
        "sha256": digest.hexdigest(),
    }


@dataclass(frozen=True)
class DDPMPlan:
    """Everything decided before step 0 of a DDPM training."""

    config: GeneratorConfig
    data: torch.Tensor  # the images scaled to [-1, 1], on the device
    labels: torch.Tensor
    class_names: tuple
    definition: dict  # what makes the weights' bytes: checked on resume
    scheduler: object  # the noise scheduler
    folder: Path | None  # log.jsonl and the resumable checkpoint, if given
    lr_factor: Callable[[int], float]

    @property
    def train(self):
        return self.config.train

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def log_due(self, done: int) -> bool:
        return done % self.train.log_every == 0 or done == self.train.steps

    def checkpoint_due(self, done: int) -> bool:
        every = self.train.checkpoint_every
        return (
            self.folder is not None
            and bool(every)
            and done % every == 0
            and done < self.train.steps
        )


@dataclass
class DDPMState:
    """What changes during a DDPM training and is checkpointed."""

    unet: torch.nn.Module
    ema: torch.nn.Module  # the exponential moving average of ``unet``: the weights saved
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # every draw of the training (a CPU generator, whatever the device)
    loss_sum: torch.Tensor  # of the steps since the last log line
    step: int = 0
    window: int = 0  # steps summed in loss_sum
    history: list = field(default_factory=list)  # the log's lines

    def checkpoint(self, plan: DDPMPlan) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "definition": plan.definition,
            "step": self.step,
            "unet": self.unet.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(generator=self.generator),
            "history": self.history,
            "window": self.window,
            "loss_sum": self.loss_sum.detach().cpu().clone(),
        }

    def restore(self, checkpoint: dict) -> None:
        self.unet.load_state_dict(checkpoint["unet"])
        self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"], generator=self.generator)
        self.step, self.history = checkpoint["step"], checkpoint["history"]
        self.window = checkpoint["window"]
        self.loss_sum = checkpoint["loss_sum"].to(self.loss_sum.device)


def make_plan(images, labels, class_names, config: GeneratorConfig, device, folder=None):
    """(DDPMPlan, the DDPMState of step 0) of a training on uint8 NxCxHxW ``images``."""
    train = config.train
    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global generator
        torch.manual_seed(train.seed)
        unet = build_unet(
            config.model,
            image_size=images.shape[-1],
            channels=images.shape[1],
            num_classes=len(class_names),
        ).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=train.lr, weight_decay=0.0)
    generator = torch_generator(train.seed, "ddpm-train")
    state = DDPMState(unet, ema, optimizer, generator, torch.zeros((), device=device))
    plan = DDPMPlan(
        config=config,
        data=(images.float() / 127.5 - 1).to(device),
        labels=labels.to(device),
        class_names=class_names,
        definition={
            **training_definition(config),
            "data": _data_definition(images, labels, class_names),
        },
        scheduler=build_scheduler(),
        folder=Path(folder) if folder is not None else None,
        # linear warm-up over the first 10% of steps (at most 100), then cosine to zero
        lr_factor=warmup_cosine(train.steps, max(1, min(100, train.steps // 10))),
    )
    return plan, state


def resume(plan: DDPMPlan, state: DDPMState) -> None:
    """Continue from the folder's checkpoint, if any (refused if made differently), and rebuild
    its log from the checkpoint's history: lines a killed training logged past it go."""
    folder = plan.folder
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, LOG):  # what a training killed mid-write left
        for tmp in stale_temporaries(folder, name):
            tmp.unlink(missing_ok=True)
    path = folder / CHECKPOINT
    if path.is_file():
        checkpoint = read_checkpoint(
            path, format=CHECKPOINT_FORMAT, what="a DDPM training checkpoint"
        )
        require_same(
            f"{path} is a DDPM training made differently",
            checkpoint["definition"],
            plan.definition,
            remedy="delete it to start over, or train into another folder",
        )
        state.restore(checkpoint)
        progress_write(f"train ddpm: resuming {path} at step {state.step}")
    write_log(folder, state.history)


def train_step(plan: DDPMPlan, state: DDPMState) -> float:
    """One optimiser step at ``state.step`` and the EMA's update; returns its learning rate."""
    train, device = plan.train, plan.data.device
    generator = state.generator
    idx = torch.randint(len(plan.data), (train.batch_size,), generator=generator).to(device)
    x0, y = plan.data[idx], plan.labels[idx]
    drop = torch.rand(len(y), generator=generator).to(device) < LABEL_DROPOUT
    y = torch.where(drop, torch.full_like(y, plan.num_classes), y)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    timesteps = plan.scheduler.config.num_train_timesteps
    t = torch.randint(timesteps, (len(y),), generator=generator).to(device)
    x_t = plan.scheduler.add_noise(x0, noise, t)
    prediction = state.unet(x_t, t, class_labels=y).sample
    if train.min_snr_gamma:
        loss = (
            _min_snr_weights(plan, t, train.min_snr_gamma) * _sample_mse(prediction, noise)
        ).mean()
    else:
        loss = F.mse_loss(prediction, noise)
    lr = train.lr * plan.lr_factor(state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    with torch.no_grad():
        for p_ema, p in zip(state.ema.parameters(), state.unet.parameters(), strict=True):
            p_ema.lerp_(p, 1 - train.ema_decay)
    state.loss_sum += loss.detach()
    state.window += 1
    state.step += 1
    return lr


def _sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).pow(2).flatten(1).mean(1)


def _min_snr_weights(plan: DDPMPlan, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR(t), gamma) / SNR(t) per sample, SNR = alpha_bar / (1 - alpha_bar) (Hang et al.
    2023, for a noise-predicting network)."""
    alpha_bar = plan.scheduler.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def log_line(plan: DDPMPlan, state: DDPMState, lr: float, images_per_s: float) -> dict:
    """The log's line of the steps since the last one (appended to the history)."""
    line = {
        "step": state.step,
        "loss": state.loss_sum.item() / state.window,
        "lr": lr,
        "images_per_s": images_per_s,
    }
    state.history.append(line)
    state.loss_sum.zero_()
    state.window = 0
    if plan.folder is not None:
        write_log(plan.folder, state.history)
    return line


def train_ddpm(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names,
    config: GeneratorConfig,
    device: str | torch.device = "cpu",
    folder: str | Path | None = None,
) -> DDPMGenerator:
    """Train on uint8 NxCxHxW ``images`` with class ids ``labels``; returns the EMA generator.
    With a training ``folder``: ``log.jsonl`` and resumable checkpoints there (module doc)."""
    plan, state = make_plan(images, labels, class_names, config, device, folder)
    resume(plan, state)
    train, start = plan.train, state.step
    began = timer = time.perf_counter()
    timed = 0  # steps since ``timer``
    bar = progress(total=train.steps, initial=start, desc="train ddpm", unit="step")
    while state.step < train.steps:
        lr = train_step(plan, state)
        timed += 1
        bar.update()
        if plan.log_due(state.step):
            now = time.perf_counter()
            line = log_line(plan, state, lr, timed * train.batch_size / max(now - timer, 1e-9))
            bar.set_postfix(loss=f"{line['loss']:.4f}")
            timed, timer = 0, now
        if plan.checkpoint_due(state.step):
            save_checkpoint(state.checkpoint(plan), plan.folder / CHECKPOINT)
    bar.close()
    _report(plan, state.history, start, time.perf_counter() - began)
    return DDPMGenerator(
        state.ema,
        plan.scheduler,
        class_names=class_names,
        image_size=images.shape[-1],
        channels=images.shape[1],
        null_class=plan.num_classes,
        sampler=config.sampler,
    )


def _report(plan: DDPMPlan, history: list, start: int, seconds: float) -> None:
    train = plan.train
    trained = train.steps - start
    resumed = f", resumed at step {start}" if start else ""
    last = f", loss {history[-1]['loss']:.4f}" if history else ""
    logged = f"; log {plan.folder / LOG}" if plan.folder is not None else ""
    progress_write(
        f"train ddpm: {train.steps} steps{resumed}{last} in {seconds:.1f} s "
        f"({trained * train.batch_size / max(seconds, 1e-9):.0f} images/s){logged}"
    )


def default_training_folder(out: str | Path) -> Path:
    """Where ``train_from_shard_set`` keeps the log and checkpoint of ``out``: beside it."""
    out = Path(out)
    return out.with_name(out.name + ".training")


def train_from_shard_set(
    real: str | Path,
    config: GeneratorConfig,
    out: str | Path,
    device: str | torch.device = "cpu",
    folder: str | Path | None = None,
) -> Path:
    """Train on a real shard set (held in memory) and ``save_pretrained`` to ``out``, atomically,
    keeping ``log.jsonl`` and the resumable checkpoint in ``folder`` (default: ``OUT.training``
    beside ``out``). A complete ``out`` trained the same way is returned as it is."""
    out = Path(out)
    folder = Path(folder) if folder is not None else default_training_folder(out)
    manifest = read_manifest(real)
    meta_path = out / GENERATOR_FILE
    if meta_path.is_file():  # written last, inside the atomic folder: the training is complete
        recorded = read_json_object(meta_path, "sio generator file").get("training")
        if recorded is not None:
            expected = {**training_definition(config), "real": manifest.content_sha256}
            if "real" not in recorded:  # weights saved before the set was recorded
                expected.pop("real")
            require_same(
                f"{out} holds a DDPM trained differently",
                {k: recorded.get(k) for k in expected},
                expected,
                remedy="delete it to train again, or choose another folder",
            )
        (folder / CHECKPOINT).unlink(missing_ok=True)
        progress_write(f"train ddpm: {out} is complete, not trained again")
        return out
    batches = list(iter_batches(real, 4096))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{real}: the built-in DDPM needs square images, got {images.shape[-2:]}")
    generator = train_ddpm(images, labels, manifest.class_names, config, device, folder)
    definition = {
        **training_definition(config),
        "real": manifest.content_sha256,  # the set's shard list: checked before any image loads
        "data": _data_definition(images, labels, manifest.class_names),
    }
    with atomic_path(out) as tmp:
        generator.save_pretrained(tmp, training=definition)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    return out
