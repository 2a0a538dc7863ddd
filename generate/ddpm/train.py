"""Training the built-in conditional DDPM on a real shard set (images held in memory).

Loss: MSE between the noise and the UNet's prediction at a uniformly drawn timestep (Ho et al.
2020), with labels dropped to the null class with probability ``label_dropout`` so that the same
network also predicts unconditionally (classifier-free guidance). The weights saved are an
exponential moving average of the trained ones.

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
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sio.core.config import to_dict
from sio.core.definition import require_same
from sio.core.files import atomic_path, stale_temporaries, write_text_atomic
from sio.core.schedules import warmup_cosine
from sio.core.seeding import torch_generator
from sio.core.weights import load_weights
from sio.generate.config import TRAIN_BYTE_NEUTRAL, GeneratorConfig
from sio.generate.ddpm.model import (
    GENERATOR_FILE,
    DDPMGenerator,
    build_scheduler,
    build_unet,
    read_json_object,
)
from sio.shardset import iter_batches, read_manifest

LABEL_DROPOUT = 0.1
LOG = "log.jsonl"
CHECKPOINT = "training.pt"
CHECKPOINT_FORMAT = 1


def training_definition(config: GeneratorConfig) -> dict:
    """What makes the trained weights' bytes: the model and training settings, less the fields
    that change none (``TRAIN_BYTE_NEUTRAL``)."""
    train = to_dict(config.train)
    for key in TRAIN_BYTE_NEUTRAL:
        train.pop(key, None)
    return {"model": to_dict(config.model), "train": train}


def _data_definition(images: torch.Tensor, labels: torch.Tensor, class_names) -> dict:
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().data)
    return {
        "shape": list(images.shape),
        "class_names": list(class_names),
        "sha256": digest.hexdigest(),
    }


def _rng_state(generator: torch.Generator) -> dict:
    """Every draw of the training comes from ``generator`` (a CPU generator, whatever the
    device, so a checkpoint resumes on another machine); the global one is kept too."""
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])


def _load_checkpoint(path: Path, definition: dict) -> dict | None:
    """The checkpoint at ``path`` (None if there is none), refused if made differently."""
    if not path.is_file():
        return None
    state = load_weights(path, what="DDPM training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a DDPM training checkpoint of format {CHECKPOINT_FORMAT}")
    require_same(
        f"{path} is a DDPM training made differently",
        state["definition"],
        definition,
        remedy="delete it to start over, or train into another folder",
    )
    return state


def _write_log(folder: Path, history: list[dict]) -> None:
    write_text_atomic(folder / LOG, "".join(json.dumps(line) + "\n" for line in history))


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
    train = config.train
    num_classes = len(class_names)
    generator = torch_generator(train.seed, "ddpm-train")
    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global generator
        torch.manual_seed(train.seed)
        unet = build_unet(
            config.model,
            image_size=images.shape[-1],
            channels=images.shape[1],
            num_classes=num_classes,
        ).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=train.lr, weight_decay=0.0)

    definition = {
        **training_definition(config),
        "data": _data_definition(images, labels, class_names),
    }
    folder = Path(folder) if folder is not None else None
    start, history = 0, []
    loss_sum = torch.zeros((), device=device)
    window = 0  # steps summed in loss_sum
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, LOG):  # what a training killed mid-write left
            for tmp in stale_temporaries(folder, name):
                tmp.unlink(missing_ok=True)
        state = _load_checkpoint(folder / CHECKPOINT, definition)
        if state is not None:
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(generator, state["rng"])
            start, history, window = state["step"], state["history"], state["window"]
            loss_sum = state["loss_sum"].to(device)
            tqdm.write(f"train ddpm: resuming {folder / CHECKPOINT} at step {start}")
        _write_log(folder, history)  # drops lines a killed training logged past its checkpoint

    data = (images.float() / 127.5 - 1).to(device)
    labels = labels.to(device)
    # linear warm-up over the first 10% of steps (at most 100), then cosine to zero
    lr_factor = warmup_cosine(train.steps, max(1, min(100, train.steps // 10)))
    began = timer = time.perf_counter()
    timed = 0  # steps since ``timer``
    bar = tqdm(total=train.steps, initial=start, desc="train ddpm", unit="step", leave=False)
    for step in range(start, train.steps):
        idx = torch.randint(len(data), (train.batch_size,), generator=generator).to(device)
        x0, y = data[idx], labels[idx]
        drop = torch.rand(len(y), generator=generator).to(device) < LABEL_DROPOUT
        y = torch.where(drop, torch.full_like(y, num_classes), y)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(y),), generator=generator).to(
            device
        )
        x_t = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(x_t, t, class_labels=y).sample, noise)
        lr = train.lr * lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - train.ema_decay)
        loss_sum += loss.detach()
        window += 1
        timed += 1
        done = step + 1
        bar.update()
        if done % train.log_every == 0 or done == train.steps:
            now = time.perf_counter()
            line = {
                "step": done,
                "loss": loss_sum.item() / window,
                "lr": lr,
                "images_per_s": timed * train.batch_size / max(now - timer, 1e-9),
            }
            history.append(line)
            bar.set_postfix(loss=f"{line['loss']:.4f}")
            loss_sum.zero_()
            window, timed, timer = 0, 0, now
            if folder is not None:
                _write_log(folder, history)
        every = train.checkpoint_every
        if folder is not None and every and done % every == 0 and done < train.steps:
            state = {
                "format": CHECKPOINT_FORMAT,
                "definition": definition,
                "step": done,
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(generator),
                "history": history,
                "window": window,
                "loss_sum": loss_sum.detach().cpu().clone(),
            }
            with atomic_path(folder / CHECKPOINT) as tmp:
                torch.save(state, tmp)
    bar.close()
    seconds = time.perf_counter() - began
    trained = train.steps - start
    resumed = f", resumed at step {start}" if start else ""
    last = f", loss {history[-1]['loss']:.4f}" if history else ""
    logged = f"; log {folder / LOG}" if folder is not None else ""
    tqdm.write(
        f"train ddpm: {train.steps} steps{resumed}{last} in {seconds:.1f} s "
        f"({trained * train.batch_size / max(seconds, 1e-9):.0f} images/s){logged}"
    )
    return DDPMGenerator(
        ema,
        scheduler,
        class_names=class_names,
        image_size=images.shape[-1],
        channels=images.shape[1],
        null_class=num_classes,
        sampler=config.sampler,
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
        tqdm.write(f"train ddpm: {out} is complete, not trained again")
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
