"""CIFAR batches are unpickled as data only: a batch that names any other global is refused
before anything it names runs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from sio.shards.arrays import CIFAR_GLOBALS
from sio.shards.samplefiles import natural_images, write_cifar10
from sio.shards.sources import DatasetError, ReadContext, get_reader
from sio.shards.spec import SourceSpec

CIFAR10_NAMES = tuple(f"c{i}" for i in range(10))


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def read(root, path):
    spec = SourceSpec(name="set", reader="cifar10", path=path)
    return get_reader("cifar10").read(spec, ReadContext(root, 32, 0))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_real_layout_batches_read_and_payloads_are_refused(tmp_path, protocol):
    train = (natural_images(10, 32, seed=3), np.arange(10) % 10)
    test = (natural_images(10, 32, seed=4), np.arange(10) % 10)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, train, test, CIFAR10_NAMES)
    source = read(tmp_path, "cifar-10-batches-py")
    np.testing.assert_array_equal(np.asarray(source.load(0)[0]), train[0][0])
    marker = tmp_path / "ran"
    for payload, name in ((RunsCommand(marker), "system"), (CallsEval(), "eval")):
        batch = {b"data": payload, b"labels": [0]}
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
        with pytest.raises(DatasetError, match=rf"data_batch_1: .*refused global .*{name}"):
            read(tmp_path, "cifar-10-batches-py")
    assert not marker.exists()


def test_only_numpy_array_rebuilders_are_allowed():
    assert {module.split(".")[0] for module, _ in CIFAR_GLOBALS} == {"numpy", "_codecs"}
