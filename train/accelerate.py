"""The trainer's GPU options, applied to one run: ``train.precision``, ``channels_last``,
``device_augment`` and ``compile`` (TrainConfig), plus what a CUDA device always gets.

- ``precision: bf16``: the forward pass and the loss run under ``torch.autocast`` of the run's
  device type with dtype bfloat16 (the backward pass outside it, as autocast recommends); the
  parameters, gradients and optimizer state stay float32. Runs on a CPU too.
- ``channels_last``: the classifier's parameters and every 4-d batch tensor in
  ``torch.channels_last`` memory order (the values are unchanged; the convolutions' summation
  order may differ in the last bits).
- ``device_augment``: the loader ships un-augmented uint8 images plus the crop/flip draws it
  would have applied (the same draws, a function of (seed, source, step) and position:
  ``sio.train.stream.part_draws``), packed as one int64 3 x n tensor that travels with the
  batch; the crop and flip then run on the training device as one gather
  (``sio.train.gpu.crop_flip``). Both gather the same uint8 pixels, so a run's batches, and its
  weights, are bitwise those of ``device_augment: false``. The method's extra sets (OE's
  outliers, PixMix's pictures) are still augmented by the loader; a method with a batch
  transform (which works on augmented images in the loader: cutmix, ce_plus, pixmix) is
  refused, as is ``resized_crop`` (TrainConfig).
- ``compile``: ``nn.Module.compile`` of the classifier, in place, so the module the checkpoint
  is written from is the uncompiled one (its state_dict keys are the plain model's: a
  checkpoint loads anywhere with ``load_classifier``).

On a CUDA device a run with bf16, channels_last or compile also gets
``torch.backends.cudnn.benchmark`` (restored afterwards; a default run keeps cuDNN's
deterministic heuristics, so it resumes bitwise),
pinned DataLoader memory with non-blocking copies (trainer.py, loop.py), resident sets in GPU
memory (resident.py), and a synchronised device before the epoch clock is read. The defaults
(fp32, and the three switches off) change nothing on any device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from sio.train.gpu import CropFlip, autocast, channels_last, crop_flip

# batch keys of the deferred augmentation (stream.assemble writes them, ``batch`` consumes them)
DRAWS, PADDING = "crop_flip", "crop_padding"


@dataclass(frozen=True)
class Acceleration:
    """The GPU options of one run (``Acceleration.of(config)``)."""

    precision: str = "fp32"
    channels_last: bool = False
    device_augment: bool = False
    compile: bool = False

    @classmethod
    def of(cls, config) -> Acceleration:
        return cls(config.precision, config.channels_last, config.device_augment, config.compile)

    def check_method(self, method) -> None:
        """Refuse ``device_augment`` for a method whose batch transform runs in the loader on
        augmented images (it would see un-augmented ones)."""
        if self.device_augment and method.transform() is not None:
            raise ValueError(
                f"train.device_augment: method {method.config.method} transforms the augmented "
                "batch in the loader, so the crop/flip cannot move to the device; set "
                "device_augment: false"
            )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The classifier in the run's memory order (before the optimizer holds its tensors)."""
        return channels_last(model, self.channels_last)

    def compiled(self, model: nn.Module) -> nn.Module:
        """``model`` itself, compiled in place when asked: its calls run compiled, its
        ``state_dict`` and parameters stay the plain module's."""
        if self.compile:
            model.compile()
        return model

    def batch(self, batch: dict) -> dict:
        """A batch already on the device: the deferred crop/flip applied (one gather) and the
        image tensors in the run's memory order."""
        if DRAWS in batch:
            draws = CropFlip.unpack(batch.pop(DRAWS), batch.pop(PADDING))
            batch["images"] = crop_flip(batch["images"], draws, channels_last=self.channels_last)
        if self.channels_last:
            batch = {key: channels_last(value) for key, value in batch.items()}
        return batch

    def autocast(self, device):
        """The context of the forward pass and the loss."""
        return autocast(device, self.precision)

    @property
    def for_speed(self) -> bool:
        """True when an option that already changes the numbers (bf16, channels_last, compile)
        is on: only then may cuDNN pick its algorithms by timing them, which can differ from
        process to process, so a default run stays repeatable and resumes bitwise on a GPU."""
        return self.precision != "fp32" or self.channels_last or self.compile

    @contextlib.contextmanager
    def backends(self, device):
        """What a training run on ``device`` sets for its duration: cudnn.benchmark on CUDA when
        ``for_speed`` (a default run leaves cuDNN's deterministic heuristics alone)."""
        if torch.device(device).type != "cuda" or not self.for_speed:
            yield
            return
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before


def deferred_crop_flip(draws: dict, n: int, padding: int) -> dict:
    """The batch entries of a deferred crop/flip: ``draws`` are the composed batch's
    (``sio.train.augment.join_draws`` of each piece's ``crop_flip_draws``) for its ``n``
    images, ``padding`` the recipe's crop padding."""
    packed = CropFlip.from_draws(draws, n, padding=padding)
    return {DRAWS: packed.pack(), PADDING: packed.padding}


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA), so a host clock read after it counts it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
