"""``sio serve``: a real HTTP server on 127.0.0.1 whose shards equal ``sio generate``'s byte for
byte, with concurrent and ranged reads, named 404s, a bounded queue, graceful shutdown, and a
classifier trained from it exactly as from the offline set."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import sio.generate.serve as serve_module
from sio.generate import Job, load_generator, run_job
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.generate.serve import ShardService, start_in_thread
from sio.shardset import ShardSetWriter, iter_chunks, read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")
BIN = Path(sys.executable).parent
TINY = GeneratorConfig(sampler=SamplerConfig(steps=2))
CLASSES = ("a", "b", "c")


def config(**changes) -> GenerateConfig:
    fields = dict(num_images=10, batch_size=4, shard_size=4, network_batch=4, seed=5)
    return GenerateConfig(**{**fields, **changes})


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, dict(response.headers), response.read()


def http_error(url, headers=None) -> urllib.error.HTTPError:
    with pytest.raises(urllib.error.HTTPError) as err:
        get(url, headers)
    return err.value


@pytest.fixture
def server(request, cond_dir):
    encoding = getattr(request, "param", "records")
    job = Job(load_generator(TINY, cond_dir), config(encoding=encoding), CLASSES)
    running = start_in_thread(ShardService(job, queue_size=4, cache=2))
    yield running, job
    running.close()


@pytest.mark.parametrize("server", ["records", "png"], indirect=True)
def test_served_shards_equal_the_offline_ones_byte_for_byte(tmp_path, cond_dir, server):
    running, job = server
    offline_job = Job(load_generator(TINY, cond_dir), job.config, CLASSES)
    offline = run_job(offline_job, tmp_path / "offline")
    status, _, body = get(f"{running.url}/manifest.json")
    manifest = json.loads(body)
    assert status == 200 and manifest["provenance"]["on_demand"] is True
    assert [(s["name"], s["num_samples"]) for s in manifest["shards"]] == [
        (s["name"], s["num_samples"]) for s in offline["shards"]
    ]
    assert manifest["class_counts"] == offline["class_counts"] == [4, 3, 3]
    assert manifest.get("encoding", "png") == offline.get("encoding", "png")
    names = [s["name"] for s in offline["shards"]] * 2
    with ThreadPoolExecutor(6) as pool:  # concurrent readers of the same and other shards
        bodies = list(pool.map(lambda n: get(f"{running.url}/{n}")[2], names))
    for name, data in zip(names, bodies, strict=True):
        assert data == (tmp_path / "offline" / name).read_bytes(), name
    # the sio readers take the URL as they take a folder
    assert read_manifest(running.url).num_samples == 10
    served = np.concatenate([c.images for c in iter_chunks(running.url)])
    np.testing.assert_array_equal(
        served, np.concatenate([c.images for c in iter_chunks(tmp_path / "offline")])
    )


def test_ranges_and_errors(server):
    running, _ = server
    url = f"{running.url}/shard-000001.tar"
    whole = get(url)[2]
    for header, part in (
        ("bytes=100-199", whole[100:200]),
        ("bytes=1000-", whole[1000:]),
        ("bytes=-50", whole[-50:]),
        (f"bytes=10-{len(whole) + 99}", whole[10:]),
    ):
        status, headers, body = get(url, {"Range": header})
        assert (status, body) == (206, part), header
        assert headers["Content-Range"].endswith(f"/{len(whole)}")
    assert http_error(url, {"Range": f"bytes={len(whole)}-"}).code == 416
    err = http_error(f"{running.url}/shard-000003.tar")
    assert err.code == 404
    message = err.read().decode()
    assert "shard-000003.tar: outside this set of 3 shards" in message
    assert "shard-000000.tar .. shard-000002.tar" in message
    assert http_error(f"{running.url}/other.json").code == 404


def test_a_full_queue_answers_503(cond_dir, monkeypatch):
    release = threading.Event()
    real = serve_module.write_shard

    def held(*args, **kw):
        release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(serve_module, "write_shard", held)
    job = Job(load_generator(TINY, cond_dir), config(encoding="records"), CLASSES)
    service = ShardService(job, queue_size=1, queue_wait_s=0.1)
    running = start_in_thread(service)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(get, f"{running.url}/shard-000000.tar")
            # the generator thread took shard 0 and waits
            assert service.wait_until(lambda: service.making == 0, 30)
            second = pool.submit(get, f"{running.url}/shard-000001.tar")
            # shard 1 fills the one place
            assert service.wait_until(lambda: service.queued == (1,), 30)
            err = http_error(f"{running.url}/shard-000002.tar")
            assert err.code == 503 and err.headers["Retry-After"] == "5"
            release.set()
            assert first.result()[0] == second.result()[0] == 200
        assert service.stats.refused == 1
        assert get(f"{running.url}/shard-000002.tar")[0] == 200
    finally:
        release.set()
        running.close()


def write_real(folder, count=24):
    rng = np.random.default_rng(0)
    with ShardSetWriter(
        folder,
        kind="real",
        name="real",
        image_size=(8, 8),
        channels=1,
        class_names=CLASSES,
        shard_size=8,
    ) as writer:
        for i in range(count):
            writer.write(f"r{i:03d}", rng.integers(0, 255, (8, 8), dtype=np.uint8), i % 3, {})
    return folder


def test_training_from_the_service_equals_training_from_the_offline_set(tmp_path, cond_dir, server):
    from sio.train import train_classifier
    from sio.train.config import TrainConfig

    running, job = server
    run_job(Job(load_generator(TINY, cond_dir), job.config, CLASSES), tmp_path / "offline")
    real = write_real(tmp_path / "real")
    settings = TrainConfig(epochs=1, batch_size=8, num_workers=0, crop_padding=0, lr=0.05)
    states = []
    for name, synthetic in (("served", running.url), ("local", tmp_path / "offline")):
        path = train_classifier(
            real=real,
            synthetic=synthetic,
            alpha=0.5,
            seed=0,
            config=settings,
            out=tmp_path / name,
        )
        states.append(torch.load(path, weights_only=True)["model_state"])
    served, local = states
    assert served.keys() == local.keys()
    for key in served:
        assert torch.equal(served[key], local[key]), key


def test_sio_serve_starts_serves_and_stops_on_sigterm(tmp_path, cond_dir):
    (tmp_path / "pipeline.yaml").write_text("generator:\n  sampler:\n    steps: 2\n")
    process = subprocess.Popen(
        [
            str(BIN / "python"),
            "-m",
            "sio",
            "serve",
            str(cond_dir),
            "--port",
            "0",
            "--config",
            str(tmp_path / "pipeline.yaml"),
            "--num-images",
            "40000",
            "--shard-size",
            "4",
            "--batch-size",
            "4",
            "--network-batch",
            "4",
            "--encoding",
            "records",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()
        while line and not line.startswith("serving"):  # e.g. "using config ..."
            line = process.stdout.readline()
        assert "serving 40000 images in 10000 shards" in line, line
        url = line.split(" at ", 1)[1].split("/manifest.json")[0]
        status, _, body = get(f"{url}/shard-009999.tar")
        assert status == 200 and len(body) > 4 * 64
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "stopped: 1 shards (4 images)" in output
