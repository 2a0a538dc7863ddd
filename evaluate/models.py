"""Evaluate any PyTorch classifier, not only sio's checkpoints: ``Evaluator``.

``Evaluator(model, benchmark=..., detectors=[...])`` checks the model (``check_model_fits``,
model_checks.py), extracts the activations of every split once (kept in
``out/activations.npz`` before any detector runs), fits the activation detectors, scores ODIN
(and other image detectors) with the model, and writes the same results.json as ``sio evaluate
--model``, whose normalisation default ("train") it shares. The parts, one concern each:
adapter.py (``ModelAdapter``, ``ModelError``), model_build.py (``build_model``, OpenOOD's
checkpoint layout, finite weights) and model_checks.py (the checks against a benchmark and the
normalisation); their names are exported here too.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from sio.core.lock import hold_folder
from sio.evaluate.activations import (
    ActivationBank,
    benchmark_key,
    benchmark_record,
    cached_bank,
    model_activations,
)
from sio.evaluate.adapter import ModelAdapter, ModelError
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.image_scoring import ModelInputs
from sio.evaluate.model_build import (
    build_model,
    check_finite_parameters,
    openood_resnet18_32x32_to_sio,
)
from sio.evaluate.model_checks import (
    check_model_fits,
    first_conv,
    normalisation,
    normalises_itself,
    train_pixel_statistics,
)
from sio.shards import read_benchmark


class Evaluator:
    """Score ``model`` on a benchmark with ``detectors`` (default: all of ``config.detectors``).

    ``model`` is any ``nn.Module``, wrapped in a ``ModelAdapter`` with ``fc_name``, ``layer``
    and the normalisation (``mean``/``std`` if given, else ``normalize``: "train", the
    benchmark's ID train pixel statistics, as ``sio evaluate --model``; "none"; or six numbers
    as text; none for sio's classifiers, which normalise themselves) unless it is one already.
    Before any image is read (``check_model_fits``) its input channels, class count, image
    size and normalisation are checked against the benchmark; a grey benchmark's channel is
    repeated for a 3-channel stem (said in one line on stderr; ``channels`` forces the count
    the model gets). ``activations(out)`` extracts (once) the ``ActivationBank``;
    ``evaluate(out)`` fits and scores every detector, ODIN with the model and the images, and
    writes results.json and results.md to ``out`` when given."""

    def __init__(
        self,
        model: nn.Module,
        *,
        benchmark: str | Path,
        detectors: Sequence[str] | None = None,
        config: EvaluateConfig | None = None,
        fc_name: str = "fc",
        layer: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: str = "train",
        channels: int | None = None,
        device: str = "cpu",
    ):
        import dataclasses

        config = config or EvaluateConfig()
        if detectors is not None:
            config = dataclasses.replace(config, detectors=tuple(detectors))
        self.config = config
        self.benchmark_dir = Path(benchmark)
        self.benchmark = read_benchmark(self.benchmark_dir)
        if not isinstance(model, ModelAdapter):
            if mean is None and std is None and not normalises_itself(model):
                mean, std = normalisation(normalize, self.benchmark_dir)
            model = ModelAdapter(model, fc_name=fc_name, layer=layer, mean=mean, std=std)
        self.model = model.to(device).eval()
        self.device = device
        self.notes = check_model_fits(self.model, self.benchmark_dir, channels)
        for note in self.notes:
            sys.stderr.write(f"evaluate: {note}\n")
        self._bank: ActivationBank | None = None

    def activations(self, out: str | Path | None = None) -> ActivationBank:
        """The ``ActivationBank`` of every split, extracted once; with ``out``, kept in
        ``out/activations.npz`` (written before any detector runs, reused by a later call
        with the same model weights, normalisation and benchmark)."""

        def compute():
            if self._bank is not None:  # extracted before, in memory
                return self._bank
            return model_activations(
                self.model,
                self.benchmark_dir,
                batch_size=self.config.batch_size,
                device=self.device,
            )

        if out is not None:
            key = {"model": model_key(self.model), "benchmark": benchmark_key(self.benchmark_dir)}
            self._bank = cached_bank(Path(out) / "activations.npz", key, compute)
        elif self._bank is None:
            self._bank = compute()
        return self._bank

    def evaluate(self, out: str | Path | None = None, *, save_scores: bool = False) -> dict:
        """Every detector's results; written to ``out`` when given (which another job writing
        it refuses: ``FolderBusy``), with the activations first (``activations``) and, with
        ``save_scores``, every detector's per-sample scores (scores.npz)."""
        from sio.evaluate.evaluate import check_detectors, evaluate_bank, write_results

        check_detectors(self.config.detectors)
        with nullcontext() if out is None else hold_folder(out):  # one job writes a folder
            inputs = ModelInputs(
                None, self.benchmark_dir, self.config.batch_size, self.device, model=self.model
            )
            scores = {} if save_scores else None
            results = evaluate_bank(
                self.activations(out),
                self.config.detectors,
                self.config.fpr_convention,
                config=self.config,
                inputs=inputs,
                class_names=self.benchmark.class_names,
                scores=scores,
            )
            results["benchmark"] = benchmark_record(self.benchmark_dir)
            if out is not None:
                write_results(results, out, scores)
        return results


def model_key(model: nn.Module) -> dict:
    """What an activations file of ``model`` depends on: its class, the sha256 of its state
    dict (names, dtypes, shapes and bytes; a ``ModelAdapter``'s normalisation included) and,
    for an adapter, where the features are taken."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    inner = model.model if isinstance(model, ModelAdapter) else model
    return {
        "class": f"{type(inner).__module__}.{type(inner).__qualname__}",
        "state_sha256": digest.hexdigest(),
        "fc_name": getattr(model, "fc_name", "fc"),
        "layer": getattr(model, "layer", None),
        "input_channels": getattr(model, "input_channels", None),
    }


__all__ = [
    "Evaluator",
    "check_finite_parameters",
    "check_model_fits",
    "first_conv",
    "ModelAdapter",
    "ModelError",
    "build_model",
    "model_key",
    "normalisation",
    "normalises_itself",
    "openood_resnet18_32x32_to_sio",
    "train_pixel_statistics",
]
