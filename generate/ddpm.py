"""The built-in class-conditional DDPM: a diffusers ``UNet2DModel`` plus our own DDIM loop.

diffusers' ``DDPMPipeline``/``DDIMPipeline`` call the UNet without ``class_labels``, so a
class-conditional UNet needs its own loop (Ho et al. 2020, DDPM; Song et al. 2021, DDIM). The
UNet is trained with classifier-free guidance in mind (Ho & Salimans 2022): labels are dropped to
an extra "null" class id ``num_classes`` during training, and sampling mixes the conditional and
unconditional predictions, ``eps = eps_null + w * (eps_cond - eps_null)`` (``w = 1`` is plain
conditional sampling).

A generator folder holds ``unet/`` and ``scheduler/`` (diffusers' ``save_pretrained`` layout)
and ``sio_generator.json`` (class names, image size, channels).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel

from sio.config import DDPMModelConfig

GENERATOR_FILE = "sio_generator.json"


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


class ConditionalDDPM:
    """Network + sampler; ``sample(n, labels, seed)`` gives uint8 NxCxHxW images."""

    def __init__(
        self, unet: UNet2DModel, scheduler: DDIMScheduler, *, class_names, image_size, channels
    ):
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.class_names = tuple(class_names)
        self.image_size = int(image_size)
        self.channels = int(channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu"):
        folder = Path(folder)
        meta_path = folder / GENERATOR_FILE
        for needed in (
            meta_path,
            folder / "unet" / "config.json",
            folder / "scheduler" / "scheduler_config.json",
        ):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{needed}: missing. A ddpm generator folder holds unet/ and scheduler/ "
                    f"(diffusers save_pretrained) and {GENERATOR_FILE}; `sio generate` writes it."
                )
        meta = json.loads(meta_path.read_text())
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(
            folder, subfolder="scheduler", local_files_only=True
        )
        return cls(
            unet.to(device),
            scheduler,
            class_names=meta["class_names"],
            image_size=meta["image_size"],
            channels=meta["channels"],
        )

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

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor,
        seed: int,
        *,
        steps: int = 50,
        eta: float = 0.0,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """DDIM sampling of ``n`` images of classes ``labels``; one seed, one set of images."""
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be {n} class ids in 0..{self.num_classes - 1}")
        device = self.unet.device
        generator = torch.Generator().manual_seed(seed)
        shape = (n, self.channels, self.image_size, self.image_size)
        x = torch.randn(shape, generator=generator).to(device)
        labels = labels.to(device)
        null = torch.full_like(labels, self.num_classes)
        self.scheduler.set_timesteps(steps)
        for t in self.scheduler.timesteps:
            if guidance == 1.0:
                eps = self.unet(x, t, class_labels=labels).sample
            else:
                both = self.unet(
                    torch.cat([x, x]), t, class_labels=torch.cat([labels, null])
                ).sample
                eps_cond, eps_null = both.chunk(2)
                eps = eps_null + guidance * (eps_cond - eps_null)
            noise_gen = generator if eta > 0 else None
            x = self.scheduler.step(eps, t, x, eta=eta, generator=noise_gen).prev_sample
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
