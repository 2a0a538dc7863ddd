"""Output that is calm in a log: one progress mechanism (sio.core.progress) whose bars become a
plain line every few seconds when stderr is not a terminal and vanish under SIO_PROGRESS=0 or
``sio --quiet``; ``sio evaluate`` ending with one summary line; results rounded to what they
mean; TensorBoard's sample grids and hyperparameters."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core import progress as progress_module
from sio.core.numbers import round_number, rounded
from sio.core.progress import progress

from .tiny_run import write_tiny_run

BAR_LINE = re.compile(
    r"^(extract|odin) [\w.]+: (\d+)/(\d+) batch \(\d+%\) \[.*(batch/s|s/batch)\]$"
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("progress"), shard_size=512)


def test_a_bar_off_a_terminal_prints_whole_lines_with_total_and_rate(monkeypatch):
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "0")
    monkeypatch.delenv("SIO_PROGRESS", raising=False)
    stderr = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", stderr)
    assert list(progress(range(7), desc="extract id_test", unit="batch")) == list(range(7))
    with progress(total=5, desc="generate ddpm", unit="img") as bar:
        for _ in range(5):
            bar.update()
    text = stderr.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[-1].startswith("generate ddpm: 5/5 img (100%) [")
    extract = [line for line in lines if line.startswith("extract id_test: ")]
    assert [line.split(" ")[2] for line in extract] == [f"{n}/7" for n in range(1, 8)]
    assert all(line.endswith(("batch/s]", "s/batch]")) for line in extract)


def test_a_bar_off_a_terminal_keeps_quiet_between_intervals(monkeypatch):
    """A long interval: no line while the bar moves, one when it ends (its last state)."""
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "3600")
    monkeypatch.delenv("SIO_PROGRESS", raising=False)
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    for _ in progress(range(1000), desc="epoch 0 [0-9]", unit="batch"):
        pass
    (line,) = stderr.getvalue().splitlines()
    assert line.startswith("epoch 0 [0-9]: 1000/1000 batch (100%) [")


def test_a_postfix_off_a_terminal_waits_for_the_next_line(monkeypatch):
    """A bar updated by hand with a postfix each step (the DDPM trainer's loss) still prints
    one line per interval, the postfix in it, not one line per set_postfix."""
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "3600")
    monkeypatch.delenv("SIO_PROGRESS", raising=False)
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    bar = progress(total=200, desc="train ddpm", unit="step")
    for step in range(200):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    (line,) = stderr.getvalue().splitlines()
    assert line.startswith("train ddpm: 200/200 step (100%)") and "loss=0.0050" in line


@pytest.mark.parametrize("switch", [("SIO_PROGRESS", "0"), ("TQDM_DISABLE", "1")])
def test_progress_switched_off_prints_nothing(monkeypatch, switch):
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv(*switch)
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    assert sum(progress(range(50), desc="x", unit="batch")) == sum(range(50))
    assert stderr.getvalue() == ""


def evaluate(tiny_run, out, *options):
    arguments = [*options, "evaluate", "--run", str(tiny_run / "run")]
    arguments += ["--benchmark", str(tiny_run / "bench"), "--detectors", "msp,odin,knn"]
    return CliRunner().invoke(get_cli(), [*arguments, "--out", str(out)])


@pytest.mark.slow
def test_evaluate_piped_shows_totals_in_lines_and_ends_with_one_summary_line(tiny_run, monkeypatch):
    monkeypatch.setenv("SIO_PROGRESS", "1")
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "0")
    result = evaluate(tiny_run, tiny_run / "eval")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    bars = [m for m in map(BAR_LINE.match, result.stderr.splitlines()) if m]
    kinds = {m.group(1) for m in bars}
    assert kinds == {"extract", "odin"}, result.stderr  # every bar has a total
    assert all(int(m.group(2)) <= int(m.group(3)) for m in bars)
    results = json.loads((tiny_run / "eval" / "results.json").read_text())
    (line,) = result.stdout.splitlines()  # no results.md dumped
    near = max(results["metrics"].items(), key=lambda item: item[1]["near"]["mean"]["auroc"])
    assert line.startswith(f"evaluate: ID acc {results['id_acc']:.1f}%; best near-OOD AUROC ")
    display = {"msp": "MSP", "odin": "ODIN", "knn": "KNN"}[near[0]]
    assert f"{near[1]['near']['mean']['auroc']:.2f} ({display})" in line
    assert f"results in {tiny_run / 'eval' / 'results.md'}" in line


@pytest.mark.slow
def test_quiet_switches_every_bar_off(tiny_run, monkeypatch):
    monkeypatch.setenv("SIO_PROGRESS", "1")  # restored after the test: --quiet sets it to 0
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "0")
    result = evaluate(tiny_run, tiny_run / "quiet", "--quiet")
    assert result.exit_code == 0, result.output
    assert not [line for line in result.stderr.splitlines() if BAR_LINE.match(line)]
    assert result.stdout.startswith("evaluate: ID acc ")


def test_round_number_keeps_1e6_and_six_significant_digits():
    assert round_number(39.800000000000004) == 39.8
    assert round_number(0.1 + 0.2) == 0.3
    assert round_number(1.2345678e-9) == 1.23457e-09  # a p-value is not rounded to 0
    rng = np.random.default_rng(0)
    for exponent in range(-12, 7):
        for value in rng.uniform(-1, 1, 50) * 10.0**exponent:
            kept = round_number(float(value))
            assert abs(kept - value) <= 5e-7 * (1 + 1e-9)  # to 1e-6
            assert abs(kept - value) <= 5e-6 * abs(value) * (1 + 1e-9)  # six digits
            assert json.loads(json.dumps(kept)) == kept
    assert rounded({"a": [1, 2.0000000001, True, None, "x"], "b": (0.1 + 0.2,)}) == {
        "a": [1, 2.0, True, None, "x"],
        "b": [0.3],
    }


@pytest.mark.slow
def test_results_json_holds_no_float_noise(tiny_run, monkeypatch):
    monkeypatch.setenv("SIO_PROGRESS", "0")
    if not (tiny_run / "eval" / "results.json").is_file():
        assert evaluate(tiny_run, tiny_run / "eval").exit_code == 0
    text = (tiny_run / "eval" / "results.json").read_text()
    numbers = re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)
    assert numbers
    for number in numbers:
        value = float(number)
        assert round_number(value) == value, number
        if "e" not in number and abs(value) >= 1e-3:
            assert len(number.split(".")[1]) <= 6, number


def test_round_number_leaves_special_values():
    assert round_number(0.0) == 0.0
    assert math.isinf(round_number(math.inf))


def test_interval_falls_back_on_a_bad_value(monkeypatch):
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "soon")
    assert progress_module.interval() == progress_module.DEFAULT_INTERVAL
    monkeypatch.setenv("SIO_PROGRESS_INTERVAL", "2.5")
    assert progress_module.interval() == 2.5
