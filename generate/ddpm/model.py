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

import contextlib
import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from sio.core.files import sha256_file
from sio.generate.config import DDPMModelConfig, SamplerConfig

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


class DDPMGenerator:
    """Network + sampler; ``sample(n, labels, seed)`` gives uint8 NxCxHxW images."""

    name = "ddpm"

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
        self.autocast = contextlib.nullcontext
        self.weights: list[Path] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device="cpu", sampler=DEFAULT_SAMPLER):
        folder = Path(folder)
        subfolder, scheduler_dir = _find_layout(folder)
        if not (scheduler_dir / "scheduler_config.json").is_file():
            raise FileNotFoundError(
                f"{scheduler_dir / 'scheduler_config.json'}: missing; "
                f"expected {LAYOUTS[0]} or {LAYOUTS[1]}"
            )
        weights_dir = folder / subfolder if subfolder else folder
        try:
            unet = UNet2DModel.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{weights_dir}: cannot load the UNet weights against "
                f"{weights_dir / 'config.json'}: {err}"
            ) from None
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
        meta_path = folder / GENERATOR_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        n_embeds = unet.config.num_class_embeds
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
        generator.weights = sorted(weights_dir.glob("*.safetensors")) or sorted(
            weights_dir.glob("*.bin")
        )
        return generator

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        meta = {
            "kind": "ddpm",
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "channels": self.channels,
        }
        (folder / GENERATOR_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def checkpoint_sha256(self) -> str:
        if not self.weights:
            raise FileNotFoundError("the generator was not loaded from a folder with weights")
        return sha256_file(self.weights[0])

    def describe(self) -> dict:
        return {
            "sampler": {
                "kind": self.sampler.kind,
                "steps": self.sampler.steps,
                "eta": self.sampler.eta,
                "guidance": self.sampler.guidance,
            }
        }

    def prepare(self, *, precision: str = "fp32", compile: bool = False) -> None:
        """bf16 autocast and torch.compile, for GPUs."""
        device = self.unet.device.type
        if precision == "bf16":
            self.autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
        if compile:
            self.unet = torch.compile(self.unet)

    def _scheduler(self, steps: int):
        kind = DDIMScheduler if self.sampler.kind == "ddim" else DDPMScheduler
        scheduler = kind.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler

    def _check_labels(self, n: int, labels, guidance: float):
        if not self.conditional:
            if labels is not None:
                raise ValueError("this UNet is unconditional: sample with labels=None")
            if guidance != 1.0:
                raise ValueError("guidance needs a class-conditional UNet")
            return None
        if labels is None or labels.shape != (n,):
            raise ValueError(
                f"a class-conditional UNet needs {n} labels, class ids in 0..{self.num_classes - 1}"
            )
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be class ids in 0..{self.num_classes - 1}")
        if guidance != 1.0 and self.null_class is None:
            raise ValueError("guidance needs a null class (a UNet trained by sio has one)")
        return labels.to(self.unet.device)

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None, seed: int, *, steps=None, eta=None, guidance=None
    ) -> torch.Tensor:
        """Sample ``n`` images (of classes ``labels`` if conditional); one seed, one result."""
        steps = steps or self.sampler.steps
        eta = self.sampler.eta if eta is None else eta
        guidance = self.sampler.guidance if guidance is None else guidance
        labels = self._check_labels(n, labels, guidance)
        device = self.unet.device
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(
            (n, self.channels, self.image_size, self.image_size), generator=generator
        ).to(device)
        scheduler = self._scheduler(steps)
        extra = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        for t in scheduler.timesteps:
            with self.autocast():
                eps = self._predict(x, t, labels, guidance).float()
            x = scheduler.step(eps, t, x, generator=generator, **extra).prev_sample
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
