"""What a training run shows: the real/synthetic split of loss and accuracy, the ID validation
accuracy, the epoch summary and final line, TensorBoard event files, and ``sio plot``."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sio.cli import get_cli
from sio.shardset import iter_batches, read_manifest
from sio.train import load_classifier, train_classifier
from sio.train import trainer as trainer_module
from sio.train.config import TrainConfig
from sio.train.models import build_classifier
from sio.train.progress import epoch_summary, final_summary
from sio.train.validation import ValidationSet

from .shardsets import grey_writer

CLASSES = ("left", "right")
BATCH, N_REAL = 8, 40
STEPS = N_REAL // BATCH  # 5
CONFIG = TrainConfig(epochs=3, batch_size=BATCH, num_workers=0, crop_padding=0, lr=0.05)


def write_set(folder, count, kind, seed, class_names=CLASSES, noise=60):
    """8x8 grey: class 0 bright on the left half, class 1 on the right, plus noise (a noisier
    set is harder: its accuracy differs from the real set's)."""
    rng = np.random.default_rng(seed)
    with grey_writer(folder, kind, class_names, 16) as writer:
        for i in range(count):
            image = rng.integers(0, noise, (8, 8))
            image[:, slice(0, 4) if i % 2 == 0 else slice(4, 8)] += 120
            writer.write(f"{kind}-{i:04d}", np.clip(image, 0, 255).astype(np.uint8), i % 2, {})
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("logging")
    return {
        "real": write_set(root / "real", N_REAL, "real", 0),
        "synthetic": write_set(root / "synthetic", 24, "synthetic", 1, noise=200),
        "val": write_set(root / "val", 21, "real", 2, noise=160),  # 21: a short last batch
    }


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def train(data, out, *, val=True, config=CONFIG, alpha=0.75, seed=3):
    """A run into ``out``; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_classifier(
            real=data["real"],
            synthetic=data["synthetic"],
            alpha=alpha,
            seed=seed,
            config=config,
            out=out,
            val=data["val"] if val else None,
        )
    return printed.getvalue()


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same run with and without --val, and what the first printed."""
    root = tmp_path_factory.mktemp("runs")
    printed = train(data, root / "val")
    train(data, root / "plain", val=False)
    return root / "val", root / "plain", printed


@pytest.mark.parametrize(
    ("alpha", "batch_size", "method"), [(0.75, 8, "ce"), (0.4, 7, "logitnorm")]
)
def test_split_sums_equal_a_recomputation_from_every_steps_logits(
    tmp_path, data, monkeypatch, alpha, batch_size, method
):
    """Each step's logits, labels and is_synthetic, caught at the objective: the log's
    real/synthetic loss is their per-sample cross-entropy, averaged per part and epoch (float64
    here, from the float32 logits), the accuracies their exact counts."""
    steps = []
    original = trainer_module.Objective.forward

    def caught(self, batch):
        loss, logits = original(self, batch)
        parts = (logits.detach().clone(), batch["labels"].clone(), batch["is_synthetic"].clone())
        steps.append(parts)
        return loss, logits

    monkeypatch.setattr(trainer_module.Objective, "forward", caught)
    config = dataclasses.replace(CONFIG, epochs=2, batch_size=batch_size, method=method)
    train(data, tmp_path / "run", val=False, config=config, alpha=alpha)
    log = read_log(tmp_path / "run")
    per_epoch = len(steps) // 2
    assert per_epoch == log[0]["steps"] and len(steps) == 2 * per_epoch
    for epoch, record in enumerate(log):
        epoch_steps = steps[epoch * per_epoch : (epoch + 1) * per_epoch]
        logits, labels, synthetic = (torch.cat(column) for column in zip(*epoch_steps, strict=True))
        logp = torch.log_softmax(logits.double(), 1)
        ce = -logp.gather(1, labels[:, None])[:, 0]
        hits = logits.argmax(1) == labels
        for part, mask in (("real", ~synthetic.bool()), ("synthetic", synthetic.bool())):
            count = int(mask.sum())
            assert record[f"{part}_seen"] == count > 0
            assert record[f"{part}_loss"] == pytest.approx(float(ce[mask].mean()), rel=1e-6)
            assert record[f"{part}_acc"] == int(hits[mask].sum()) / count
        assert record["train_acc"] == int(hits.sum()) / len(hits)
        seen = record["real_seen"] + record["synthetic_seen"]
        mixed = (record["real_loss"] * record["real_seen"]) + (
            record["synthetic_loss"] * record["synthetic_seen"]
        )
        if method == "ce":  # CE's loss is the per-sample mean; LogitNorm's is another
            assert record["loss"] == pytest.approx(mixed / seen, rel=1e-6)
        else:
            assert abs(record["loss"] - mixed / seen) > 1e-3


def test_baseline_has_no_synthetic_part(tmp_path, data):
    config = dataclasses.replace(CONFIG, epochs=1)
    train(data, tmp_path / "run", val=False, config=config, alpha=1.0)
    (record,) = read_log(tmp_path / "run")
    assert record["synthetic_loss"] is None and record["synthetic_acc"] is None
    assert record["real_acc"] == record["train_acc"] and record["val_acc"] is None
    assert record["real_loss"] == pytest.approx(record["loss"], rel=1e-6)


def direct_accuracy(run, shard_set, batch_size) -> float:
    model, _ = load_classifier(run)
    correct = total = 0
    with torch.no_grad():
        for images, labels in iter_batches(shard_set, batch_size):
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return correct / total


def test_val_acc_is_the_checkpoints_accuracy_and_changes_no_weight(runs, data):
    with_val, without, _ = runs
    log = read_log(with_val)
    assert log[-1]["val_acc"] == direct_accuracy(with_val, data["val"], BATCH)
    assert all(0 <= r["val_acc"] <= 1 for r in log)
    plain = read_log(without)
    assert all(r["val_acc"] is None for r in plain)
    for a, b in zip(log, plain, strict=True):
        for record in (a, b):
            record.pop("images_per_s"), record.pop("val_acc")
        assert a == b
    model_a, _ = load_classifier(with_val)
    model_b, _ = load_classifier(without)
    state_b = model_b.state_dict()
    for name, value in model_a.state_dict().items():
        assert torch.equal(value, state_b[name]), name


def test_val_set_must_match_the_real_set(tmp_path, data):
    other = write_set(tmp_path / "other", 6, "real", 5, class_names=("left", "up"))
    with pytest.raises(
        ValueError, match=r"real and val \(.*other\) shard sets differ in class_names"
    ):
        train_classifier(
            real=data["real"],
            synthetic=None,
            alpha=1.0,
            seed=0,
            config=CONFIG,
            out=tmp_path / "run",
            val=other,
        )
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_val_accuracy_keeps_the_mode_and_the_rng_states(data):
    manifest = read_manifest(data["real"])
    model = build_classifier("small_cnn", in_channels=1, num_classes=2, mean=[0.4], std=[0.3])
    model.train()
    validation = ValidationSet(data["val"], manifest, 4)
    before = torch.get_rng_state()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    first = validation.accuracy(model, "cpu")
    assert model.training and torch.equal(torch.get_rng_state(), before)
    for name, value in model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(value, buffers[name]), name
    assert validation.accuracy(model, "cpu") == first  # held in memory: the same images
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in iter_batches(data["val"], 4))
    assert first == correct / 21


def test_epoch_summary_and_final_line(runs):
    with_val, _, printed = runs
    log = read_log(with_val)
    lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    for line, record in zip(lines, log, strict=True):
        assert line == epoch_summary(record, 3)
        assert line.startswith(f"epoch {record['epoch']} [0-2]  loss {record['loss']:.3f}  ")
        accuracy = (
            f"acc {100 * record['train_acc']:.1f}% (real {100 * record['real_acc']:.1f}%, "
            f"synthetic {100 * record['synthetic_acc']:.1f}%)  val {100 * record['val_acc']:.1f}%"
        )
        assert accuracy in line and line.endswith(f"lr {record['lr']:.3g}")
    final = printed.splitlines()[-1]
    assert final.startswith("done: 3 epochs [0-2], ")
    assert printed.count("checkpoint.pt") == 1  # the checkpoint is named once
    assert f"final val acc {100 * log[-1]['val_acc']:.1f}%" in final
    assert final.endswith(f"checkpoint {with_val / 'checkpoint.pt'}")


def test_summary_leaves_out_what_a_run_does_not_have():
    record = {
        "epoch": 0,
        "loss": 1.23456,
        "train_acc": 0.5,
        "real_acc": 0.5,
        "synthetic_acc": None,
        "val_acc": None,
        "images_per_s": 12345.6,
        "lr": 0.1,
        "skipped_corrupt": 0,
        "skipped_missing": 2,
    }
    assert epoch_summary(record, 40) == (
        "epoch 0 [0-39]  loss 1.235  acc 50.0%  12,346 img/s  lr 0.1  skipped 2"
    )
    history = [{**record, "real_seen": 100, "synthetic_seen": 0, "images_per_s": 50.0}] * 2
    final = final_summary(history, Path("r/checkpoint.pt"), 75.0)
    assert final == (
        "done: 2 epochs [0-1], 4.0s in training steps (1m 15s wall time in this call), final train "
        "acc 50.0% (no --val set), checkpoint r/checkpoint.pt"
    )


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_mid_epoch_resume_logs_the_same_lines_and_tensorboard_holds_them_once(
    tmp_path, data, monkeypatch
):
    """Killed mid-epoch 2 (a checkpoint every 2 steps), resumed: every log line, split and
    val accuracy included, is the uninterrupted run's, and tb/ holds each epoch once."""
    config = dataclasses.replace(CONFIG, epochs=4, checkpoint_every=2)
    train(data, tmp_path / "full", config=config)
    original = trainer_module.train_step

    def interrupted(objective, batch, *args):
        if batch["step"] == 2 * STEPS + 3:
            raise KeyboardInterrupt
        return original(objective, batch, *args)

    monkeypatch.setattr(trainer_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "resumed", config=config)
    monkeypatch.undo()
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 * STEPS + 2 and state["epoch_totals"]  # mid-epoch sums saved
    assert len(scalars(tmp_path / "resumed" / "tb")["loss/real"]) == 2
    train(data, tmp_path / "resumed", config=config)
    full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(full, resumed, strict=True):
        for key in ("images_per_s", "shard_reads", "shard_decodes", "shard_cached"):
            a.pop(key), b.pop(key)  # the node's work: its cache was warm for the second run
        assert a == b
    assert all(r["synthetic_acc"] is not None and r["val_acc"] is not None for r in resumed)
    events = scalars(tmp_path / "resumed" / "tb")
    want = {
        "loss/train": "loss",
        "loss/real": "real_loss",
        "loss/synthetic": "synthetic_loss",
        "acc/real": "real_acc",
        "acc/synthetic": "synthetic_acc",
        "acc/val": "val_acc",
        "lr": "lr",
        "data/real_seen": "real_seen",
    }
    for tag, field in want.items():
        assert [step for step, _ in events[tag]] == [0, 1, 2, 3], tag
        values = [value for _, value in events[tag]]
        assert values == pytest.approx([r[field] for r in resumed], rel=1e-6, abs=1e-12), tag
    assert len(list((tmp_path / "resumed" / "tb").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_is_skipped_quietly_without_the_package(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    train(data, tmp_path / "run", val=False, config=dataclasses.replace(CONFIG, epochs=1))
    assert len(read_log(tmp_path / "run")) == 1
    assert not (tmp_path / "run" / "tb").exists()


def plot(*args):
    return CliRunner().invoke(get_cli(), ["plot", *map(str, args)])


def png(path) -> Image.Image:
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


def test_plot_draws_a_train_run(runs, tmp_path):
    with_val, _, _ = runs
    result = plot(with_val, "--out", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert result.output == f"plot: {tmp_path / 'curves.png'}\n"
    image = png(tmp_path / "curves.png")
    # loss, accuracy, learning rate, images/s: 2 x 2 panels of 5.5 x 3.8 in at 200 dpi
    assert image.size == (2200, 1520)
    assert (tmp_path / "curves.pdf").is_file() and (tmp_path / "curves.svg").is_file()
    assert len(image.convert("RGB").getcolors(1 << 24)) > 50  # curves, not a blank page
    result = plot(with_val)  # default: log.png beside the log
    assert result.exit_code == 0 and png(with_val / "log.png").size == (2200, 1520)


def test_plot_panels_group_the_fields():
    from sio.pipeline.plot import panels

    records = [
        {"epoch": 0, "loss": 1.0, "real_acc": 0.5, "synthetic_acc": None, "lr": 0.1, "ranks": 1},
        {"epoch": 1, "loss": 0.5, "real_acc": 0.75, "synthetic_acc": 0.25, "lr": 0.05, "ranks": 1},
    ]
    x_key, xs, groups = panels(records)
    assert (x_key, xs) == ("epoch", [0.0, 1.0])
    groups = dict(groups)
    assert groups["loss"] == {"loss": [1.0, 0.5]}
    accuracy = groups["accuracy (%)"]
    assert accuracy["real_acc"] == [50.0, 75.0]
    assert math.isnan(accuracy["synthetic_acc"][0]) and accuracy["synthetic_acc"][1] == 25.0
    assert groups["learning rate"] == {"lr": [0.1, 0.05]}
    assert set(groups) == {"loss", "accuracy (%)", "learning rate"}  # ranks: constant


def test_plot_to_an_unwritable_place_is_refused_in_one_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"epoch": 0, "loss": 1}\n{"epoch": 1, "loss": 0.5}\n')
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "curves.png"  # its folder is a file
    result = plot(tmp_path, "--out", target)
    assert result.exit_code != 0
    assert f"{target}: cannot write the plot" in result.output
    assert "Traceback" not in result.output and not target.exists()


def test_plot_draws_a_ddpm_log_by_step(tmp_path):
    """`sio generate --train-on --generator-dir DIR` logs to DIR.training/: `sio plot DIR`."""
    (tmp_path / "ddpm").mkdir()  # the weights folder
    folder = tmp_path / "ddpm.training"
    folder.mkdir()
    lines = [{"step": 50 * i, "loss": 1 / (1 + i), "lr": 1e-4} for i in range(40)]
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = plot(tmp_path / "ddpm", "--out", tmp_path / "ddpm.png")
    assert result.exit_code == 0, result.output
    assert png(tmp_path / "ddpm.png").size == (2200, 760)  # loss, lr: one row of two


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "log.jsonl: no such file"),
        ("", "log.jsonl: empty log"),
        ('{"epoch": 0, "loss": 1}\n{"epoch": 1, "lo', "log.jsonl, line 2: not JSON"),
        ("[1, 2]\n", "log.jsonl, line 1: a JSON list, not an object"),
        ('{"note": "x"}\n', "log.jsonl: no numeric field to plot"),
        (b"\xff\xfe\x00garbage", "log.jsonl: not a text file"),
    ],
)
def test_plot_names_the_file_of_a_bad_log(tmp_path, content, message):
    if isinstance(content, bytes):
        (tmp_path / "log.jsonl").write_bytes(content)
    elif content is not None:
        (tmp_path / "log.jsonl").write_text(content)
    result = plot(tmp_path)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ") and message in line and str(tmp_path) in line
    assert not (tmp_path / "log.png").exists()


def test_plot_draws_a_real_ddpm_training_log(tmp_path):
    """A tiny built-in DDPM trained into a training folder (its log.jsonl: step, loss, lr,
    images_per_s), plotted by step: loss, lr and images/s panels."""
    from sio.generate import train_from_shard_set
    from sio.generate.config import DDPMModelConfig, DDPMTrainConfig, GeneratorConfig

    real = write_set(tmp_path / "real", 16, "real", 4)
    config = GeneratorConfig(
        model=DDPMModelConfig(block_out_channels=(8, 16), layers_per_block=1),
        train=DDPMTrainConfig(steps=6, batch_size=4, lr=1e-2, seed=3, log_every=2),
    )
    folder = tmp_path / "generator" / "ddpm"
    with contextlib.redirect_stdout(io.StringIO()):
        train_from_shard_set(real, config, folder / "weights", "cpu", folder)
    logged = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [2, 4, 6]
    result = plot(folder)
    assert result.exit_code == 0, result.output
    assert png(folder / "log.png").size == (2200, 1520)  # loss, learning rate, images / s
