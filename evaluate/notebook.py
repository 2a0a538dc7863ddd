"""The notebook path: one detector, fitted on a model and any DataLoader, scoring images.

    det = sio.evaluate.detector("knn")                # settings: detector("knn", k=10)
    det.fit(model, id_train_loader, val_loader=None)  # or det.fit(bank)
    scores = det(images)                              # a torch tensor, higher = more ID

A thin adapter over what ``sio evaluate`` runs: the model is wrapped in ``ModelAdapter`` (the
penultimate features are the input of its final linear layer ``fc_name``, or the output of
``layer``), the loaders' features are extracted by ``activations.batch_features`` into an
``ActivationBank`` and the registered detector class is fitted on it; ODIN (an
``InputDetector``) needs no fit and scores the images with the model. Images are uint8 (scaled
to [0, 1]) or floats given to the model as they are; ``mean``/``std`` normalise them first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from sio.evaluate.activations import ActivationBank, batch_features
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.detectors import DETECTORS, InputDetector
from sio.evaluate.detectors.base import check_finite, detector_error
from sio.evaluate.models import ModelAdapter
from sio.evaluate.search import with_setting


def detector(name: str, config: EvaluateConfig | None = None, **settings) -> NotebookDetector:
    """The registered detector ``name`` with the settings of ``config.<name>`` (default: sio's
    defaults), updated by ``settings`` (checked as in pipeline.yaml), e.g.
    ``detector("knn", k=10)``."""
    return NotebookDetector(name, config, **settings)


def loader_bank(
    model: ModelAdapter, train: Iterable, val: Iterable | None, device
) -> ActivationBank:
    """The ``ActivationBank`` a detector is fitted on: ``model``'s last layer and the features
    and labels of the ID train (and val) batches. No detector fits on ID test, so the train rows
    stand in for it (the bank needs one)."""
    features, labels = batch_features(model, train, device, "extract train")
    if val is None:
        val_features, val_labels = features[:0], labels[:0]
    else:
        val_features, val_labels = batch_features(model, val, device, "extract val")
    bias = model.fc.bias
    weight = model.fc.weight.detach().float().cpu().numpy()
    return ActivationBank(
        weight,
        np.zeros(len(weight), np.float32) if bias is None else bias.detach().float().cpu().numpy(),
        {"train": features, "val": val_features, "test": features},
        {"train": labels, "val": val_labels, "test": labels},
        {},
    )


class NotebookDetector:
    """One detector with pytorch-ood's calls: ``fit(model, loader)`` (or ``fit(bank)``), then
    ``score(images)`` or ``det(images)``: a float64 torch tensor, higher = more ID. Fitted on a
    bank, it scores penultimate features instead of images."""

    def __init__(self, name: str, config: EvaluateConfig | None = None, **settings):
        config = config or EvaluateConfig()
        if settings:
            if getattr(config, name, None) is None:
                raise ValueError(f"detector {name} has no settings; got {sorted(settings)}")
            config = with_setting(config, name, settings)
        self.name = name
        self.detector = DETECTORS.get(name).from_config(config)
        self.model: ModelAdapter | None = None
        self.device = "cpu"
        self.fitted = False

    def fit(
        self,
        model: nn.Module | ActivationBank,
        id_train_loader: Iterable | None = None,
        val_loader: Iterable | None = None,
        *,
        fc_name: str = "fc",
        layer: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str = "cpu",
    ) -> NotebookDetector:
        """Fit on ``model``'s features of the ID train (and val) batches of (images, labels),
        or on an ``ActivationBank``; ODIN only keeps the model."""
        self.device = device
        if isinstance(model, ActivationBank):
            if isinstance(self.detector, InputDetector):
                raise detector_error(self.name, "a bank", "needs the model: fit(model, loader)")
            self.model, bank = None, model
        else:
            if not isinstance(model, ModelAdapter):
                model = ModelAdapter(model, fc_name=fc_name, layer=layer, mean=mean, std=std)
            self.model = model.to(device).eval()
            if isinstance(self.detector, InputDetector):
                self.fitted = True
                return self
            if id_train_loader is None:
                raise detector_error(self.name, "id.train", "fit(model, id_train_loader) needs it")
            bank = loader_bank(self.model, id_train_loader, val_loader, device)
        self.detector.fit(bank)
        self.fitted = True
        return self

    def score(self, images) -> torch.Tensor:
        """Scores of a batch of images (N x C x H x W), of every batch of a DataLoader of
        images or (images, labels), or, fitted on a bank, of penultimate features N x D."""
        if not self.fitted:
            raise detector_error(self.name, "its input", "score() needs fit(...) first")
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            parts = [self.score(b[0] if isinstance(b, (tuple, list)) else b) for b in images]
            return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        if self.model is None:
            scores = self.detector.score(np.asarray(images))
        elif isinstance(self.detector, InputDetector):
            scores = self.detector.score_batch(self.model, torch.as_tensor(images).to(self.device))
        else:
            with torch.no_grad():
                features = self.model.features(torch.as_tensor(images).to(self.device))
            scores = self.detector.score(features.float().cpu().numpy())
        return torch.from_numpy(check_finite(self.name, "its input", scores))

    __call__ = score

    def info(self) -> dict:
        """The detector's settings and fitted values (as results.json's ``detectors``)."""
        return self.detector.info()


__all__ = ["NotebookDetector", "detector", "loader_bank"]
