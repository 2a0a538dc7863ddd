"""Text-to-image generators: a local diffusers pipeline folder, one prompt per class.

``generator.name: text2image`` with ``generator.path`` a folder that diffusers'
``save_pretrained`` wrote (``model_index.json`` beside ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``: Stable Diffusion 1.x/2.x, SDXL, ...), loaded with
``AutoPipelineForText2Image.from_pretrained(folder, local_files_only=True)``: nothing is
downloaded. Class k of the benchmark is drawn from its prompt (``generator.text2image``: the
template ``"a photo of a {name}"`` or the class's own, a negative prompt, guidance, steps,
resolution), and each image's starting latents (and any sampler noise) come from its own
``torch.Generator`` seeded by its seed, as every sio generator: image i is a function of (the
pipeline's weights, its prompt, ``seeds[i]``) alone, whatever batch it is drawn in (base.py).
The decoded images are resized (bilinear, antialiased) to the benchmark's size, and made grey
(ITU-R 601 luma) for a grey benchmark with ``grey``. ``generate.precision: bf16`` runs the
pipeline under bf16 autocast on a GPU. The text encoder needs ``transformers``, an optional
extra (``pip install 'sio[text2image]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from sio.generate.base import Generator, seeded_generators
from sio.generate.config import Text2ImageSettings

INDEX_FILE = "model_index.json"
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def require_transformers() -> None:
    """A one-line error naming the extra when ``transformers`` is not installed."""
    if importlib.util.find_spec("transformers") is None:
        raise ValueError(
            "generator text2image needs the transformers package (its text encoder), an "
            "optional extra: pip install 'sio[text2image]'"
        )


def load_pipeline(folder: Path, device):
    """The diffusers text-to-image pipeline saved in ``folder``, from local files only."""
    require_transformers()
    if not (folder / INDEX_FILE).is_file():
        raise FileNotFoundError(
            f"{folder / INDEX_FILE}: missing; a text2image generator folder is a diffusers "
            "pipeline as save_pretrained writes it (model_index.json, unet/, vae/, "
            "text_encoder/, tokenizer/, scheduler/)"
        )
    from diffusers import AutoPipelineForText2Image

    try:
        with quiet_loading():
            pipeline = AutoPipelineForText2Image.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{folder}: not a loadable text-to-image pipeline: {first}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


@contextlib.contextmanager
def quiet_loading():
    """diffusers' and transformers' loading bars and notices off while a pipeline loads."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    for module in (diffusers_logging, transformers_logging):
        module.disable_progress_bar()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for module in (diffusers_logging, transformers_logging):
            module.enable_progress_bar()


def weight_files(folder: Path) -> list[Path]:
    """The pipeline's weights files, by name."""
    suffixes = (".safetensors", ".bin", ".pt")
    return sorted(p for p in folder.rglob("*") if p.suffix in suffixes and p.is_file())


class Text2ImageGenerator(Generator):
    """A diffusers text-to-image pipeline + the prompts of the benchmark's classes."""

    name = "text2image"
    title = "text-to-image pipeline"
    network_attr = "unet"
    conditional = True

    def __init__(self, pipeline, settings: Text2ImageSettings, *, image_size=None, folder=None):
        pipeline.unet.eval().requires_grad_(False)
        self.pipeline = pipeline
        self.settings = settings
        self.class_names = tuple(settings.class_names)
        self.image_size = int(image_size or settings.resolution)
        self.channels = 1 if settings.grey else 3
        self.folder = Path(folder) if folder is not None else None
        self.weights = weight_files(self.folder) if self.folder is not None else []

    @classmethod
    def from_pretrained(cls, folder, device="cpu", *, settings: Text2ImageSettings, image_size):
        folder = Path(folder)
        pipeline = load_pipeline(folder, device)
        return cls(pipeline, settings, image_size=image_size, folder=folder)

    @property
    def unet(self):
        return self.pipeline.unet

    @unet.setter
    def unet(self, module) -> None:  # prepare(compile=True) wraps it
        self.pipeline.unet = module

    def use_class_names(self, names) -> None:
        """Draw the target benchmark's classes (when ``text2image.class_names`` is empty)."""
        names = tuple(str(n) for n in names)
        unknown = sorted({p.name for p in self.settings.prompts} - set(names))
        if unknown:
            raise ValueError(
                f"generator.text2image.prompts: {unknown[:5]} are not classes of the target "
                f"benchmark ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
            )
        self.class_names = names

    def checkpoint_sha256(self) -> str:
        """sha256 over every weights file of the pipeline folder (unet, vae, text encoder)."""
        from sio.generate import weights_fingerprint

        if self.folder is None:
            raise FileNotFoundError("the pipeline was not loaded from a folder with weights")
        return weights_fingerprint(self.folder)

    def describe(self) -> dict:
        settings = self.settings
        return {
            "pipeline": type(self.pipeline).__name__,
            "scheduler": type(self.pipeline.scheduler).__name__,
            "prompts": self.prompts(),
            "negative_prompt": settings.negative_prompt,
            "guidance": settings.guidance,
            "steps": settings.steps,
            "resolution": settings.resolution,
            "grey": settings.grey,
        }

    def prompts(self) -> list[str]:
        """Each class's prompt, in class order."""
        return [self.settings.prompt_of(name) for name in self.class_names]

    def _sample_rows(self, labels, seeds) -> torch.Tensor:
        prompts = self.prompts()
        settings = self.settings
        negative = settings.negative_prompt or None
        with self.autocast():
            images = self.pipeline(
                prompt=[prompts[k] for k in labels.tolist()],
                negative_prompt=None if negative is None else [negative] * len(seeds),
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                height=settings.resolution,
                width=settings.resolution,
                generator=seeded_generators(seeds),
                output_type="pt",
            ).images
        return self._to_uint8(images.float())

    def _to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] N×3×R×R images to uint8 N×C×S×S at the benchmark's size S."""
        if images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(
                images, size=size, mode="bilinear", antialias=True, align_corners=False
            )
        if self.settings.grey:
            weights = torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)
            images = (images * weights).sum(1, keepdim=True)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
