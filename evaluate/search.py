"""The optional detector hyperparameter search (``evaluate.search``), as OpenOOD v1.5's APS.

- OOD val: from each OOD set of n samples, n_val = max(1, floor(f n)) rows (f =
  ``ood_val_fraction``) drawn without replacement by ``numpy_rng(seed, "ood-val", group, name)``.
  They are left out of every detector's test metrics (also of detectors without a grid, so all
  are compared on the same test samples); the other rows are the set's test part.
- Grids: each detector class's ``search_grid``, OpenOOD v1.5's ``postprocessor_sweep`` from
  ``configs/postprocessors/<name>.yml`` where ``APS_mode`` is true: ODIN T in {1, 10, 100, 1000}
  x eps in {0.0014, 0.0028}, ReAct percentile {85, 90, 95, 99}, KNN k {50, 100, 200, 500, 1000}
  (k <= N_train), VIM dim {256, 1000} (dim < D, plus the default rule's dim); of OpenOOD's
  other detectors ASH and SCALE percentile {65, 70, ..., 95} (those keeping >= 1 entry), GEN
  gamma x m, fDBD's normaliser, NCI alpha, VRA high x low percentiles and Relation's power.
  EBO's sweep is T in {1} and the APS of DICE, NNGuide, MDS, RMDS and SHE is off, so they,
  like the detectors without a sweep (Residual), keep their settings.
- Each candidate is fitted on ID train/val as usual, scored on ID val (positive) and all OOD val
  sets together, and ranked by scikit-learn's AUROC; the first best in grid order wins (as
  OpenOOD's ``hyperparam_search``: a later candidate must be strictly better).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sio.core.seeding import numpy_rng
from sio.evaluate.activations import ActivationBank
from sio.evaluate.config import EvaluateConfig, SearchSettings
from sio.evaluate.detectors import DETECTORS, finite_scores, fit_detector
from sio.evaluate.detectors.base import detector_error
from sio.evaluate.metrics import auroc


@dataclass(frozen=True)
class OodSplit:
    """Sorted row indices of each OOD set ({group: {name: rows}}): ``val`` held out for the
    search, ``test`` the rest."""

    val: dict[str, dict[str, np.ndarray]]
    test: dict[str, dict[str, np.ndarray]]

    def test_bank(self, bank: ActivationBank) -> ActivationBank:
        """``bank`` with each OOD set cut to its test rows (detectors fit on ID data only)."""
        ood = {
            group: {name: feats[self.test[group][name]] for name, feats in sets.items()}
            for group, sets in bank.ood.items()
        }
        return dataclasses.replace(bank, ood=ood)

    def val_features(self, bank: ActivationBank) -> np.ndarray:
        """The OOD val rows of every OOD set, stacked in group and set order."""
        parts = [
            feats[self.val[group][name]]
            for group, sets in bank.ood.items()
            for name, feats in sets.items()
        ]
        return np.concatenate(parts)


def heldout_rows(n: int, settings: SearchSettings, group: str, name: str) -> np.ndarray:
    """The sorted OOD val rows of one set of ``n`` samples (see the module docstring)."""
    if n < 2:
        raise ValueError(
            f"evaluate.search: OOD set {group}.{name} has {n} samples; holding out OOD val "
            "leaves it no test samples (it needs at least 2)"
        )
    count = max(1, math.floor(settings.ood_val_fraction * n))
    rng = numpy_rng(settings.seed, "ood-val", group, name)
    return np.sort(rng.permutation(n)[:count])


def ood_split(bank: ActivationBank, settings: SearchSettings) -> OodSplit:
    """OOD val and test rows of every OOD set of ``bank``."""
    val, test = {}, {}
    for group, sets in bank.ood.items():
        val[group], test[group] = {}, {}
        for name, feats in sets.items():
            rows = heldout_rows(len(feats), settings, group, name)
            val[group][name] = rows
            test[group][name] = np.setdiff1d(np.arange(len(feats)), rows)
    return OodSplit(val, test)


def with_setting(config: EvaluateConfig, name: str, setting: dict) -> EvaluateConfig:
    """``config`` with ``evaluate.<name>`` updated by ``setting`` (validated as in a file)."""
    section = dataclasses.replace(getattr(config, name), **setting)
    return dataclasses.replace(config, **{name: section})


def grid_search(
    name: str,
    settings: list[dict],
    config: EvaluateConfig,
    build: Callable[[EvaluateConfig], object],
    score_val: Callable[[object], tuple[np.ndarray, np.ndarray]],
):
    """(the first detector with the best val AUROC, its results.json ``search`` entry).

    ``build`` makes a (fitted) detector from a config, ``score_val`` gives its (ID val, OOD val)
    scores; val AUROC is in percent, ID positive.
    """
    best, best_auroc, chosen, candidates = None, -math.inf, None, []
    for setting in settings:
        detector = build(with_setting(config, name, setting))
        id_val, ood_val = score_val(detector)
        if len(id_val) == 0:
            raise detector_error(name, "id.val", "the search needs ID val samples; it is empty")
        value = auroc(id_val, ood_val)
        candidates.append({**setting, "val_auroc": value})
        if value > best_auroc:
            best, best_auroc, chosen = detector, value, setting
    grid = {key: list(values) for key, values in DETECTORS.get(name).search_grid.items()}
    entry = {
        "grid": grid,
        "candidates": candidates,
        "chosen": chosen,
        "id_val_samples": len(id_val),
        "ood_val_samples": len(ood_val),
    }
    return best, entry


def search_activation_detector(
    name: str, bank: ActivationBank, config: EvaluateConfig, split: OodSplit | None
):
    """(fitted detector, ``search`` entry or None): the grid's best with ``split``, else the
    detector with its configured settings."""
    settings = DETECTORS.get(name).search_settings(bank) if split is not None else []
    if not settings:
        return fit_detector(name, bank, config), None
    ood_val = split.val_features(bank)

    def score_val(detector):
        return (
            finite_scores(detector, bank, bank.id_features["val"], "id.val"),
            finite_scores(detector, bank, ood_val, "ood.val"),
        )

    return grid_search(name, settings, config, lambda cfg: fit_detector(name, bank, cfg), score_val)
