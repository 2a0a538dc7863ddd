"""``sio evaluate``: score ID and OOD activations with each detector; results.json + table.

``results.json``::

    {"id_acc": 95.1, "fpr_convention": "id",
     "benchmark": {"name": "cifar10", "sha256": "..."},  # its benchmark.json, when known
     "metrics": {"msp": {"near": {"datasets": {"cifar100": {"fpr95": .., "auroc": ..,
                                                            "aupr_in": .., "aupr_out": ..}},
                                  "mean": {...the same four...}},
                         "far": {...}}},
     "skipped": {"odin": "needs the model and the images: use sio evaluate --run",
                 "openmax": "detector openmax on id.train: class '3' has 0 correctly ..."},
     "detectors": {"vim": {"dim": 256, "alpha": 3.1}, ...}}

Metric values are percentages and always finite (a NaN or inf is refused, naming where).
``fpr_convention`` "id" counts OOD accepted at 95 % ID accepted (SIO, the literature and the
OpenOOD v1.5 tag); "ood" counts ID rejected at 95 % OOD rejected (OpenOOD's main branch since
August 2023, which its current leaderboard uses). ``skipped`` lists detectors that could not
run on what was given (ODIN without the model) and, with their reason (classes by name), those
that could not be fitted or gave a NaN or inf score: the others are scored and written all the
same, unless ``evaluate.strict`` (``--strict``) makes that an error naming the detector;
``metrics`` holds each scored detector's metrics (``methods`` before issue 29: ``read_results``
in arms.py reads such a file as if it said ``metrics``); ``detectors`` records settings and
fitted values. ``scores.npz`` (``--save-scores``) holds each scored detector's per-sample
scores, keyed ``<detector>/id.test`` and ``<detector>/ood.<group>.<name>`` as the activations
file names its sets. With ``evaluate.search`` on, every test metric leaves out the OOD val
rows, and a searched detector's entry also holds ``"search": {"grid", "candidates":
[{..setting.., "val_auroc"}], "chosen", "id_val_samples", "ood_val_samples"}`` (see
search.py), and a top-level ``"search": {"ood_val_fraction", "seed", "ood_val_samples":
{group: {set: n}}}`` says what was held out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sio.core.files import atomic_path, write_json_atomic, write_text_atomic
from sio.core.lock import hold_folder
from sio.core.numbers import rounded
from sio.evaluate.activations import (
    ActivationBank,
    benchmark_record,
    check_classifier_fits,
    extract_activations,
)
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.detectors import DETECTORS, DetectorError, finite_scores, needs_images
from sio.evaluate.detectors.base import detector_error
from sio.evaluate.image_scoring import ModelInputs, load_model, score_image_sets, score_image_val
from sio.evaluate.metrics import METRICS, mean_metrics, ood_metrics
from sio.evaluate.search import OodSplit, grid_search, ood_split, search_activation_detector

NEEDS_MODEL = "needs the model and the images: use sio evaluate --run"
SCORES_FILE = "scores.npz"  # per-sample scores, with --save-scores


def id_accuracy(bank: ActivationBank) -> float:
    predictions = bank.logits(bank.id_features["test"]).argmax(axis=1)
    return 100 * float(np.mean(predictions == bank.id_labels["test"]))


def check_detectors(detectors) -> list[str]:
    """The names, checked before any work: each known (the error lists them) and listed once."""
    detectors = list(detectors)
    for detector in detectors:
        DETECTORS.get(detector)
    repeated = sorted({d for d in detectors if detectors.count(d) > 1})
    if repeated:
        raise ValueError(f"detectors listed twice: {', '.join(repeated)}")
    return detectors


def activation_scores(detector, bank: ActivationBank):
    """(ID test scores, {group: {name: scores}}) of a fitted activation detector on ``bank``."""
    id_scores = finite_scores(detector, bank, bank.id_features["test"], "id.test")
    ood = {
        group: {
            name: finite_scores(detector, bank, feats, f"ood.{group}.{name}")
            for name, feats in sets.items()
        }
        for group, sets in bank.ood.items()
    }
    return id_scores, ood


def image_scores(
    name: str, bank: ActivationBank, config: EvaluateConfig, inputs: ModelInputs, split
):
    """(detector, search entry or None, ID test scores, OOD scores) for a detector that needs
    the model: its grid searched on the ID val and OOD val images when ``split`` is given."""
    cls, model = DETECTORS.get(name), load_model(inputs)
    settings = cls.search_settings(bank) if split is not None else []
    search = None
    if settings:
        detector, search = grid_search(
            name,
            settings,
            config,
            cls.from_config,
            lambda detector: score_image_val(detector, model, inputs, split.val),
        )
    else:
        detector = cls.from_config(config)
    rows = None if split is None else split.test
    return (detector, search, *score_image_sets(detector, inputs, rows, model))


def metrics_entry(id_scores, ood_scores: dict, fpr_convention: str) -> dict:
    entry = {}
    for group, sets in ood_scores.items():
        if not sets:
            continue
        per_dataset = {
            name: ood_metrics(id_scores, scores, fpr_convention) for name, scores in sets.items()
        }
        entry[group] = {"datasets": per_dataset, "mean": mean_metrics(per_dataset)}
    return entry


def named_classes(message: str, class_names: Sequence[str] | None) -> str:
    """``message`` with each class index ("class 3", "classes 0 and 1") replaced by the
    class's name from the benchmark (``class 'three'``), when the names are known."""
    if not class_names:
        return message

    def name(index: str) -> str:
        return repr(class_names[int(index)]) if int(index) < len(class_names) else index

    def names(match: re.Match) -> str:
        return re.sub(r"\d+", lambda m: name(m[0]), match[0])

    return re.sub(r"\bclass(?:es)? \d+(?: and \d+)*\b", names, message)


def score_detector(name, bank, test_bank, config, inputs, split, fpr_convention):
    """(results.json metrics entry, ``detectors`` entry, per-sample scores) of one detector; a
    fit that fails, a NaN or inf score or fitted value raises ``DetectorError`` naming it."""
    try:
        if needs_images(name):
            detector, search, id_scores, ood_scores = image_scores(
                name, bank, config, inputs, split
            )
        else:
            detector, search = search_activation_detector(name, bank, config, split)
            id_scores, ood_scores = activation_scores(detector, test_bank)
    except np.linalg.LinAlgError as err:  # a singular or non-converging fit
        raise detector_error(name, "its fit", str(err)) from None
    info = detector.info()
    bad = non_finite(info, f"detectors.{name}")
    if bad is not None:
        raise detector_error(name, "its fit", f"{bad} is not a finite number")
    return (
        metrics_entry(id_scores, ood_scores, fpr_convention),
        info if search is None else {**info, "search": search},
        score_arrays(name, id_scores, ood_scores),
    )


def evaluate_bank(
    bank: ActivationBank,
    detectors,
    fpr_convention: str = "id",
    *,
    config: EvaluateConfig | None = None,
    inputs: ModelInputs | None = None,
    class_names: Sequence[str] | None = None,
    scores: dict | None = None,
) -> dict:
    """Every detector in ``detectors`` on ``bank``; detectors that need images use ``inputs``
    (the checkpoint and benchmark) and are skipped, with the reason recorded, without it. A detector
    that cannot be fitted or gives a NaN or inf score is recorded under ``skipped`` with its
    reason (classes named by ``class_names``) and the others are scored; with
    ``config.strict`` it is raised instead (``DetectorError``, naming the detector). With
    ``config.search.enabled`` the OOD val rows are held out of every test metric and each
    detector with a grid takes the setting with the best val AUROC (search.py). ``scores``,
    when given, receives each scored detector's per-sample test scores
    (``<detector>/id.test``, ``<detector>/ood.<group>.<name>``)."""
    config = config or EvaluateConfig()
    split: OodSplit | None = ood_split(bank, config.search) if config.search.enabled else None
    test_bank = bank if split is None else split.test_bank(bank)
    results = {
        "id_acc": id_accuracy(bank),
        "fpr_convention": fpr_convention,
        "parity": config.parity,
        "metrics": {},
        "skipped": {},
        "detectors": {},
    }
    if split is not None:  # the test metrics below leave these OOD rows out
        results["search"] = {
            "ood_val_fraction": config.search.ood_val_fraction,
            "seed": config.search.seed,
            "ood_val_samples": {
                group: {name: len(rows) for name, rows in sets.items()}
                for group, sets in split.val.items()
            },
        }
    for name in check_detectors(detectors):
        if needs_images(name) and inputs is None:
            results["skipped"][name] = NEEDS_MODEL
            continue
        try:
            entry, info, arrays = score_detector(
                name, bank, test_bank, config, inputs, split, fpr_convention
            )
        except DetectorError as err:
            reason = named_classes(str(err), class_names)
            if config.strict:
                raise DetectorError(reason) from None
            results["skipped"][name] = reason
            continue
        results["metrics"][name], results["detectors"][name] = entry, info
        if scores is not None:
            scores.update(arrays)
    return results


def score_arrays(detector: str, id_scores, ood_scores: dict) -> dict[str, np.ndarray]:
    """One detector's per-sample scores as ``scores.npz`` keys them."""
    arrays = {f"{detector}/id.test": np.asarray(id_scores, np.float64)}
    for group, sets in ood_scores.items():
        for name, values in sets.items():
            arrays[f"{detector}/ood.{group}.{name}"] = np.asarray(values, np.float64)
    return arrays


def evaluate_checkpoint(
    checkpoint: str | Path,
    benchmark_dir: str | Path,
    out: str | Path,
    config: EvaluateConfig,
    *,
    device: str = "cpu",
    save_scores: bool = False,
) -> dict:
    """``sio evaluate --run``: extract (or reuse) ``out/activations.npz``, written before any
    detector runs, score every detector of ``config`` (ODIN with the model and images), write
    results.json, results.md, run.json (alpha and seed from the checkpoint) and, with
    ``save_scores``, scores.npz. Another job writing ``out`` is refused (``FolderBusy``)."""
    from sio.evaluate.model_build import check_finite_parameters
    from sio.train import checkpoint_file, load_classifier

    checkpoint, out = checkpoint_file(checkpoint), Path(out)
    check_detectors(config.detectors)
    with hold_folder(out):  # one job writes a folder
        model, info = load_classifier(checkpoint)
        check_finite_parameters(model.state_dict(), checkpoint)  # a NaN fc.weight, named
        check_classifier_fits(info, benchmark_dir)  # before any work, also for a cached bank
        bank = extract_activations(
            checkpoint,
            Path(benchmark_dir),
            out / "activations.npz",
            batch_size=config.batch_size,
            device=device,
        )
        inputs = ModelInputs(checkpoint, Path(benchmark_dir), config.batch_size, device)
        scores = {} if save_scores else None
        results = evaluate_bank(
            bank,
            config.detectors,
            config.fpr_convention,
            config=config,
            inputs=inputs,
            class_names=info.class_names,
            scores=scores,
        )
        results["benchmark"] = benchmark_record(benchmark_dir)
        write_results(results, out, scores)
        run = {
            "alpha": info.alpha,
            "seed": info.seed,
            "checkpoint": str(checkpoint),
            "benchmark": results["benchmark"],
            "recipe": info.recipe,  # sio report compares the arms' recipes
        }
        write_json_atomic(out / "run.json", run)
    return results


def _settings(info: dict) -> str:
    def text(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list) and len(value) > 4:
            return f"[{len(value)} values]"
        return str(value)

    return ", ".join(f"{key} {text(value)}" for key, value in info.items() if key != "search")


def _search_line(search: dict) -> str:
    """One line of results.md for a searched detector: each candidate's val AUROC."""

    def setting(entry):
        return " ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "val_auroc")

    tried = "; ".join(f"{setting(c)}: {c['val_auroc']:.2f}" for c in search["candidates"])
    return (
        f"Search (ID val {search['id_val_samples']} vs OOD val {search['ood_val_samples']}): "
        f"chose {setting(search['chosen'])}; val AUROC {tried}."
    )


def markdown_table(results: dict) -> str:
    """OpenOOD's layout: one table per detector, rows near sets, nearood, far sets, farood."""
    header = "| dataset | FPR@95 | AUROC | AUPR_IN | AUPR_OUT | ACC |\n|---|---|---|---|---|---|"
    lines = [f"FPR@95 convention: {results['fpr_convention']}-positive. Values in percent.", ""]
    for detector, groups in results["metrics"].items():
        lines += [f"### {detector}", ""]
        info = results.get("detectors", {}).get(detector)
        if info:
            lines += [f"Settings: {_settings(info)}.", ""]
        if info and "search" in info:
            lines += [_search_line(info["search"]), ""]
        lines.append(header)
        for group, entry in groups.items():
            rows = [*entry["datasets"].items(), (f"{group}ood", entry["mean"])]
            for name, values in rows:
                cells = " | ".join(f"{values[m]:.2f}" for m in METRICS)
                lines.append(f"| {name} | {cells} | {results['id_acc']:.2f} |")
        lines.append("")
    for detector, reason in results.get("skipped", {}).items():
        lines.append(f"Skipped {detector}: {reason}.")
    return "\n".join(lines)


def summary_line(results: dict) -> str:
    """One line: how many detectors were scored and which were skipped, with why."""
    scored, skipped = results["metrics"], results.get("skipped", {})
    line = f"{len(scored)} detector{'s' * (len(scored) != 1)} scored"
    if skipped:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        line += f", {len(skipped)} skipped ({reasons})"
    return line


def non_finite(value, where: str = "results") -> str | None:
    """The path of the first NaN or inf number in ``value`` (nested dicts and lists), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{where}.{key}")
        if found:
            return found
    return None


def write_results(results: dict, out: str | Path, scores: dict | None = None) -> None:
    """results.json and results.md, and scores.npz when ``scores`` ({key: per-sample scores},
    see ``evaluate_bank``) is given; a NaN or inf anywhere is refused (named) before writing."""
    bad = non_finite(results)
    if bad is None and scores is not None:
        bad = next((key for key, value in scores.items() if not np.isfinite(value).all()), None)
    if bad is not None:
        raise ValueError(f"{bad} is not a finite number; nothing was written to {out}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if scores is not None:
        with atomic_path(out / SCORES_FILE, suffix=".npz") as tmp:
            np.savez(tmp, **scores)
    text = json.dumps(rounded(results), indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_text_atomic(out / "results.json", text)
    write_text_atomic(out / "results.md", markdown_table(results) + "\n")
