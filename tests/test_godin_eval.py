"""G-ODIN's score reaches the evaluator: a classifier trained with train.method godin is scored
by the `godin` detector through `sio evaluate --run`, and any other classifier is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sio.evaluate import DetectorError, evaluate_checkpoint
from sio.evaluate.config import EvaluateConfig
from sio.shards import read_benchmark, write_benchmark
from sio.shards.config import DigitsConfig, ShardConfig
from sio.shardset import iter_batches
from sio.train import load_checkpoint, train_classifier
from sio.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("godin")
    digits = DigitsConfig(id_classes=(0, 1), near_ood_classes=(2,), far_ood_images_per_set=16)
    write_benchmark(ShardConfig(shard_size=512, digits=digits), root / "bench")
    return root


def train(bench, method):
    config = TrainConfig(method=method, epochs=1, batch_size=32, num_workers=0)
    out = bench / method
    train_classifier(
        real=bench / "bench" / "id_train", synthetic=None, alpha=1.0, seed=0, config=config, out=out
    )
    return out


@pytest.mark.slow
def test_godin_score_through_evaluate(bench):
    run = train(bench, "godin")
    config = EvaluateConfig(detectors=("godin", "ebo"), batch_size=64)
    results = evaluate_checkpoint(run, bench / "bench", bench / "eval", config)
    model, state = load_checkpoint(run)
    assert state["head"] == "godin"
    benchmark = read_benchmark(bench / "bench")

    def scores(folder):
        images = torch.cat([b[0] for b in iter_batches(folder, 256)])
        return model.godin_score(images).double().numpy()

    id_scores, near = scores(benchmark.id_splits["test"]), scores(benchmark.near["digits"])
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(near))]
    expected = 100 * roc_auc_score(labels, np.r_[id_scores, near])
    near_auroc = results["metrics"]["godin"]["near"]["datasets"]["digits"]["auroc"]
    assert near_auroc == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_godin_detector_refuses_a_plain_classifier(bench):
    run = train(bench, "ce")
    with pytest.raises(DetectorError, match="train.method: godin"):
        evaluate_checkpoint(
            run,
            bench / "bench",
            bench / "eval-ce",
            EvaluateConfig(detectors=("godin",), batch_size=64, strict=True),
        )
