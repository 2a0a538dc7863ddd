"""The evaluate stage's names before issue 29 still work: ``evaluate.methods`` is read as
``evaluate.detectors`` and ``--methods`` as ``--detectors``, each with one note on stderr, and a
results.json whose metrics are under ``methods`` gives the report the new one gives, and a
``sio run`` evaluate folder stamped with ``methods`` is done, not refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.config import ConfigError
from sio.core.stages import COMPLETE_FILE, STAGE_FILE, stage_verdict
from sio.evaluate import ActivationBank, evaluate_stage
from sio.evaluate.config import EvaluateConfig
from sio.pipeline.config import load_pipeline

CONFIG_NOTE = (
    "note: evaluate.methods is now evaluate.detectors (read as it; rename it in your config)"
)
OPTION_NOTE = "note: --methods is now --detectors (read as it; rename it in your command)"


def sio(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args])


@pytest.fixture
def activations(tmp_path, monkeypatch):
    """A separable activations file (two classes, one near and one far set) in ``tmp_path``,
    the working folder (so no ./pipeline.yaml of the repository is read)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    means = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])

    def rows(n, centre=None):
        labels = np.arange(n) % 2
        centres = means[labels] if centre is None else np.asarray(centre)
        return (centres + rng.normal(0, 0.5, (n, 3))).astype(np.float32), labels

    splits = {"train": rows(40), "val": rows(10), "test": rows(20)}
    bank = ActivationBank(
        fc_weight=means.astype(np.float32),
        fc_bias=np.zeros(2, np.float32),
        id_features={name: h for name, (h, _) in splits.items()},
        id_labels={name: y for name, (_, y) in splits.items()},
        ood={"near": {"n": rows(15, [1.5, 1.5, 0.0])[0]}, "far": {"f": rows(15, [0, 0, 3])[0]}},
    )
    path = tmp_path / "act.npz"
    np.savez(path, **bank.to_npz_dict())
    return path


def test_an_old_methods_key_is_read_as_detectors_with_one_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("evaluate: {methods: [msp], fpr_convention: ood}\n")
    config = load_pipeline(path)
    assert config.evaluate.detectors == ("msp",)
    assert config.evaluate.fpr_convention == "ood"
    assert capsys.readouterr().err.splitlines() == [CONFIG_NOTE]


def test_the_old_and_the_new_key_together_are_refused_naming_both(tmp_path, capsys):
    path = tmp_path / "both.yaml"
    path.write_text("evaluate: {methods: [msp], detectors: [ebo]}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert message.startswith(f"{path}: evaluate.methods: ")
    assert "evaluate.detectors" in message and "\n" not in message
    assert capsys.readouterr().err == ""  # refused, not noted


def test_sio_evaluate_notes_an_old_config_once(activations, tmp_path):
    (tmp_path / "old.yaml").write_text("evaluate: {methods: [msp, ebo]}\n")
    result = sio("evaluate", "--activations", activations, "--config", "old.yaml", "--out", "e")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines().count(CONFIG_NOTE) == 1
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert set(results["metrics"]) == {"msp", "ebo"}


def test_methods_option_still_works_hidden_and_not_beside_detectors(activations, tmp_path):
    result = sio("evaluate", "--activations", activations, "--methods", "ebo,msp", "--out", "e")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines().count(OPTION_NOTE) == 1
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert set(results["metrics"]) == {"ebo", "msp"} and "methods" not in results
    shown = sio("evaluate", "--help").output
    assert "--detectors" in shown and "--methods" not in shown
    both = sio(
        *("evaluate", "--activations", activations, "--out", "x"),
        *("--methods", "msp", "--detectors", "ebo"),
    )
    assert both.exit_code == 2, both.output
    assert "--methods" in both.output and "--detectors" in both.output
    assert not (tmp_path / "x").exists()


def test_an_old_results_json_gives_the_same_report(activations, tmp_path):
    for alpha, seed in ((1, 0), (1, 1), (0.8, 0), (0.8, 1)):
        new = tmp_path / "new" / f"a{alpha}-s{seed}"
        args = ("--alpha", alpha, "--seed", seed, "--detectors", "msp,ebo,mls", "--out", new)
        result = sio("evaluate", "--activations", activations, *args)
        assert result.exit_code == 0, result.output
        old = tmp_path / "old" / new.name
        shutil.copytree(new, old)
        results = json.loads((old / "results.json").read_text())
        results["methods"] = results.pop("metrics")  # as sio evaluate wrote it before issue 29
        (old / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    reports = {}
    for kind in ("new", "old"):
        folders = sorted((tmp_path / kind).iterdir())
        result = sio("report", *folders, "--out", tmp_path / f"report-{kind}")
        assert result.exit_code == 0, result.output
        reports[kind] = {
            name: (tmp_path / f"report-{kind}" / name).read_text()
            for name in ("report.md", "report.json", "report.csv", "openood.csv")
        }
    assert reports["old"] == reports["new"]
    assert "| msp |" in reports["new"]["report.md"]
    arms = json.loads(reports["new"]["report.json"])
    assert set(arms["1"]["metrics"]) == {"msp", "ebo", "mls"}


def test_an_evaluate_stage_stamped_with_methods_is_done_with_detectors(tmp_path):
    made = evaluate_stage(EvaluateConfig(detectors=("msp",)), "c" * 64, "b" * 64)
    stamp = json.loads(json.dumps(made.definition))
    stamp["evaluate"]["methods"] = stamp["evaluate"].pop("detectors")  # as before issue 29
    (tmp_path / STAGE_FILE).write_text(json.dumps(stamp))
    (tmp_path / COMPLETE_FILE).write_text("{}")
    verdict = stage_verdict(tmp_path, made.definition, False, made.resumable, made.defaults)
    assert verdict.action == "skip", verdict.why
    other = evaluate_stage(EvaluateConfig(detectors=("ebo",)), "c" * 64, "b" * 64)
    verdict = stage_verdict(tmp_path, other.definition, False, other.resumable, other.defaults)
    assert verdict.action == "refuse" and "evaluate.detectors" in verdict.why
