"""DDPM generators: any diffusers ``UNet2DModel`` folder, sampled with our own loop.

diffusers' ``DDPMPipeline``/``DDIMPipeline`` call the UNet without ``class_labels``, so a
class-conditional UNet (``num_class_embeds``) needs its own loop (Ho et al. 2020, DDPM; Song et
al. 2021, DDIM). A folder is either diffusers' ``save_pretrained`` layout (``unet/``,
``scheduler/``) or the hub's flat one (``config.json``, weights and ``scheduler_config.json``,
e.g. a copy of google/ddpm-cifar10-32). sio's own generators add ``sio_generator.json`` with the
class names; their UNet has one extra class id, the "null" class used for classifier-free
guidance (Ho & Salimans 2022): ``eps = eps_null + w * (eps_cond - eps_null)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from sio.core.weights import load_weights
from sio.generate.base import Generator, seeded_generators
from sio.generate.config import DDPMModelConfig, SamplerConfig


class AccelerateNotice(logging.Filter):
    """Drops diffusers' "`accelerate` was not found ... low_cpu_mem_usage" notice, and only it:
    sio builds and loads its UNets itself (``load_unet``), so the advice to install accelerate
    for faster loading does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`accelerate` was not found" not in record.getMessage()


ACCELERATE_NOTICE = AccelerateNotice()
logging.getLogger("diffusers.models.modeling_utils").addFilter(ACCELERATE_NOTICE)

GENERATOR_FILE = "sio_generator.json"
DEFAULT_SAMPLER = SamplerConfig()
LAYOUTS = (
    "unet/config.json + scheduler/scheduler_config.json (diffusers save_pretrained)",
    "config.json + scheduler_config.json (the hub's flat layout)",
)


def build_unet(model: DDPMModelConfig, *, image_size: int, channels: int, num_classes: int):
    """A small UNet for tiny images; class id ``num_classes`` is the guidance null class."""
    levels = len(model.block_out_channels)
    down = [
        "AttnDownBlock2D" if model.attention and i == levels - 1 else "DownBlock2D"
        for i in range(levels)
    ]
    up = ["AttnUpBlock2D" if model.attention and i == 0 else "UpBlock2D" for i in range(levels)]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(model.block_out_channels),
        layers_per_block=model.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(8, model.block_out_channels[0]),
        num_class_embeds=num_classes + 1,
    )


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        prediction_type="epsilon",
    )


def _find_layout(folder: Path) -> tuple[str | None, Path]:
    """(unet subfolder or None, scheduler config folder), or FileNotFoundError naming both."""
    if (folder / "unet" / "config.json").is_file():
        return "unet", folder / "scheduler"
    if (folder / "config.json").is_file():
        return None, folder
    raise FileNotFoundError(
        f"{folder}: no UNet config. A ddpm generator folder holds "
        f"either {LAYOUTS[0]} or {LAYOUTS[1]}."
    )


def read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} (JSON): {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a {what}: expected a JSON object")
    return data


WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _read_weights(folder: Path) -> tuple[Path, dict]:
    """(file, state dict) of the UNet's weights in ``folder``, or an error naming the file."""
    files = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{folder}: no UNet weights ({' or '.join(WEIGHT_FILES)})")
    path = files[0]
    if path.suffix != ".safetensors":
        return path, load_weights(path, what="weights file")
    try:
        from safetensors.torch import load_file

        return path, load_file(path)
    except Exception as err:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise ValueError(f"{path}: not a readable weights file: {err}") from None


def load_unet(folder: Path) -> tuple[UNet2DModel, Path]:
    """The UNet of ``folder`` (its config.json and weights), loaded strictly: a missing or an
    unexpected weight is an error naming the file and the keys (diffusers itself initialises
    missing weights randomly and only warns)."""
    config_path = folder / "config.json"
    config = read_json_object(config_path, "UNet config")
    try:
        unet = UNet2DModel.from_config(config)
    except Exception as err:  # noqa: BLE001 - diffusers raises many kinds for a bad config
        raise ValueError(f"{config_path}: not a UNet2DModel config: {err}") from None
    weights, state = _read_weights(folder)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        parts = [
            f"{label} {_few(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("keys of another shape", wrong),
            )
            if keys
        ]
        raise ValueError(
            f"{weights}: cannot load the UNet weights against {config_path}: {'; '.join(parts)}"
        )
    unet.load_state_dict(state, strict=True)
    return unet, weights


def _few(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


class DDPMGenerator(Generator):
    """Network + sampler; ``sample(n, labels, seed)`` gives uint8 NxCxHxW images."""

    name = "ddpm"
    title = "UNet"
    network_attr = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler,
        *,
        class_names=(),
        image_size=None,
        channels=None,
        null_class: int | None = None,
        sampler: SamplerConfig = DEFAULT_SAMPLER,
    ):
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.conditional = unet.config.num_class_embeds is not None
        self.class_names = tuple(class_names)
        self.image_size = int(image_size or unet.config.sample_size)
        self.channels = int(channels or unet.config.in_channels)
        self.null_class = null_class
        self.sampler = sampler
        self.weights: list[Path] = []

    @classmethod
    def from_pretrained(cls, folder: str | Path, device="cpu", sampler=DEFAULT_SAMPLER):
        folder = Path(folder)
        subfolder, scheduler_dir = _find_layout(folder)
        scheduler_path = scheduler_dir / "scheduler_config.json"
        if not scheduler_path.is_file():
            raise FileNotFoundError(
                f"{scheduler_path}: missing; expected {LAYOUTS[0]} or {LAYOUTS[1]}"
            )
        weights_dir = folder / subfolder if subfolder else folder
        unet, weights = load_unet(weights_dir)
        scheduler_config = read_json_object(scheduler_path, "scheduler config")
        try:
            scheduler = DDPMScheduler.from_config(scheduler_config)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{scheduler_path}: not a DDPM scheduler config: {err}") from None
        meta_path = folder / GENERATOR_FILE
        meta = read_json_object(meta_path, "sio generator file") if meta_path.is_file() else {}
        n_embeds = unet.config.num_class_embeds
        if meta.get("class_names") and n_embeds is None:
            raise ValueError(
                f"{weights_dir / 'config.json'}: no num_class_embeds (an unconditional UNet), "
                f"but {meta_path} lists {len(meta['class_names'])} classes"
            )
        names = meta.get("class_names") or [str(i) for i in range(n_embeds or 0)]
        null = len(names) if meta and n_embeds == len(names) + 1 else None
        generator = cls(
            unet.to(device),
            scheduler,
            class_names=names,
            null_class=null,
            image_size=meta.get("image_size"),
            channels=meta.get("channels"),
            sampler=sampler,
        )
        generator.weights = [weights]
        return generator

    def save_pretrained(self, folder: str | Path, training: dict | None = None) -> None:
        """diffusers' layout plus ``sio_generator.json`` (with ``training``, the definition the
        weights were trained from, when given)."""
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        meta = {
            "kind": "ddpm",
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "channels": self.channels,
        }
        if training is not None:
            meta["training"] = training
        (folder / GENERATOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def describe(self) -> dict:
        return {
            "sampler": {
                "kind": self.sampler.kind,
                "steps": self.sampler.steps,
                "eta": self.sampler.eta,
                "guidance": self.sampler.guidance,
            }
        }

    def _scheduler(self, steps: int):
        kind = DDIMScheduler if self.sampler.kind == "ddim" else DDPMScheduler
        scheduler = kind.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler

    @torch.no_grad()
    def sample_seeds(self, labels, seeds, *, steps=None, eta=None, guidance=None):
        """Images of ``seeds`` (and classes ``labels`` if conditional); image i's starting noise
        and DDPM/DDIM step noise come from its own stream seeded by ``seeds[i]``."""
        steps = steps or self.sampler.steps
        eta = self.sampler.eta if eta is None else eta
        guidance = self.sampler.guidance if guidance is None else guidance
        if guidance != 1.0 and not self.conditional:
            raise ValueError("guidance needs a class-conditional UNet")
        if guidance != 1.0 and self.null_class is None:
            raise ValueError("guidance needs a null class (a UNet trained by sio has one)")
        return super().sample_seeds(labels, seeds, steps=steps, eta=eta, guidance=guidance)

    def _sample_rows(self, labels, seeds, *, steps, eta, guidance):
        device = self.device
        labels = None if labels is None else labels.to(device)
        generators = seeded_generators(seeds)
        shape = (self.channels, self.image_size, self.image_size)
        x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        scheduler = self._scheduler(steps)
        extra = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        for t in scheduler.timesteps:
            with self.autocast():
                eps = self._predict(x, t, labels, guidance).float()
            x = scheduler.step(eps, t, x, generator=generators, **extra).prev_sample
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def _predict(self, x, t, labels, guidance):
        if labels is None:
            return self.unet(x, t).sample
        if guidance == 1.0:
            return self.unet(x, t, class_labels=labels).sample
        null = torch.full_like(labels, self.null_class)
        both = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        eps_cond, eps_null = both.chunk(2)
        return eps_null + guidance * (eps_cond - eps_null)
