"""Several services (or mirrors) serving one set: ``URL1,URL2`` (or a list) as a set location.
Real HTTP servers on 127.0.0.1: the shards are spread over them (shard i from mirror i mod n),
training gives bitwise the weights of training from one of them, a dead mirror is skipped at
once, a service of another set is refused by name, and the node cache keys a shard by its
content, whichever mirror served it."""

from __future__ import annotations

import functools
import http.server
import socket
import threading

import numpy as np
import pytest
import torch

from sio.core import storage
from sio.core.storage import TransportError, fetch_bytes, join_location, mirrors, rotate
from sio.generate import Job, load_generator
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.generate.serve import ShardService, start_in_thread
from sio.shardset import (
    ShardError,
    ShardSetWriter,
    ShardStream,
    iter_chunks,
    read_manifest,
    shard_urls,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = GeneratorConfig(sampler=SamplerConfig(steps=2))
CLASSES = ("a", "b", "c")


def config(**changes) -> GenerateConfig:
    fields = dict(
        num_images=20, batch_size=4, shard_size=4, network_batch=4, seed=5, encoding="records"
    )
    return GenerateConfig(**{**fields, **changes})


def service(cond_dir, **changes):
    job = Job(load_generator(TINY, cond_dir), config(**changes), CLASSES)
    return start_in_thread(ShardService(job, queue_size=4, cache=8))


@pytest.fixture
def services(cond_dir):
    running = [service(cond_dir) for _ in range(2)]
    yield running
    for server in running:
        server.close()


def dead_url() -> str:
    """A 127.0.0.1 port nobody listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_location_lists(tmp_path):
    a, b, c = "http://h1:1", "https://h2:2/x", "s3://bucket/p"
    assert mirrors(f"{a},{b},{c}") == (a, b, c) == mirrors([a, b, c])
    assert mirrors(a) == (a,)
    local = str(tmp_path / "a,b")  # a local path may hold a comma
    assert mirrors(local) == (local,)
    assert join_location([a, b], "shard-000001.tar") == f"{a}/shard-000001.tar,{b}/shard-000001.tar"
    for first in range(-3, 7):
        rotated = mirrors(rotate(f"{a},{b},{c}", first))
        assert rotated[0] == (a, b, c)[first % 3] and sorted(rotated) == sorted((a, b, c))
    with pytest.raises(ValueError, match="bucket-less: a list of locations holds the URLs"):
        storage.as_location([a, "bucket-less"])


def test_training_from_two_services_equals_training_from_one(tmp_path, services):
    from sio.train import train_classifier
    from sio.train.config import TrainConfig

    real = tmp_path / "real"
    rng = np.random.default_rng(0)
    with ShardSetWriter(
        real,
        kind="real",
        name="real",
        image_size=(8, 8),
        channels=1,
        class_names=CLASSES,
        shard_size=8,
    ) as writer:
        for i in range(40):
            writer.write(f"r{i:03d}", rng.integers(0, 255, (8, 8), dtype=np.uint8), i % 3, {})
    settings = TrainConfig(
        epochs=1, batch_size=8, num_workers=0, shuffle_window=8, crop_padding=0, lr=0.05
    )
    one, two = services
    states, served = [], []
    for name, synthetic in (("both", [one.url, two.url]), ("one", one.url)):
        before = [s.service.stats.requests for s in services]
        path = train_classifier(
            real=real, synthetic=synthetic, alpha=0.5, seed=0, config=settings, out=tmp_path / name
        )
        served.append([s.service.stats.requests - b for s, b in zip(services, before, strict=True)])
        states.append(torch.load(path, weights_only=True)["model_state"])
    both, alone = states
    assert both.keys() == alone.keys()
    for key in both:
        assert torch.equal(both[key], alone[key]), key
    # spread: mirror i mod 2 first (shards 0, 2, 4 from one, 1 and 3 from two)
    assert served[0][0] > 0 and served[0][1] > 0, served
    assert served[1][0] > 0 and served[1][1] == 0, served


def test_the_stream_and_the_readers_spread_shards_and_give_the_same_samples(services):
    one, two = services
    location = f"{one.url},{two.url}"
    urls = shard_urls(location)
    assert [u.split(",")[0].rsplit("/", 1)[0] for u in urls] == [
        one.url,
        two.url,
        one.url,
        two.url,
        one.url,
    ]
    before = [s.service.stats.requests for s in services]
    listed = list(ShardStream(location))
    after = [s.service.stats.requests for s in services]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2]
    alone = list(ShardStream(two.url))
    assert len(listed) == len(alone) == 20
    for (image, label), (other, other_label) in zip(listed, alone, strict=True):
        assert torch.equal(image, other) and label == other_label
    np.testing.assert_array_equal(
        np.concatenate([c.images for c in iter_chunks([two.url, one.url])]),
        np.concatenate([c.images for c in iter_chunks(one.url)]),
    )


def test_a_dead_service_is_skipped_at_once_and_named(services):
    one, _ = services
    dead = dead_url()
    location = f"{dead},{one.url}"
    said = []
    name = "shard-000002.tar"
    data = fetch_bytes(join_location(location, name), timeout_s=30, say=said.append)
    assert data == fetch_bytes(f"{one.url}/{name}", timeout_s=30)
    assert len(said) == 1 and said[0].startswith(f"{dead}/{name} failed")
    assert f"trying the next mirror, {one.url}/{name}" in said[0]
    # a set is opened only when every service answers with the same manifest
    with pytest.raises(ShardError, match=f"{dead}/manifest.json: cannot read the manifest"):
        read_manifest(location)
    # all of them down: the wait, then a transport error naming the shard and the mirrors
    said.clear()
    other = dead_url()
    with pytest.raises(TransportError, match=f"{dead}/{name} and its 1 mirrors: unreachable"):
        fetch_bytes(join_location(f"{dead},{other}", name), timeout_s=0.5, say=said.append)
    assert any(line.startswith(f"waiting for {dead}/{name} and its 1 mirrors") for line in said)
    assert any("trying the next mirror" in line for line in said)


def test_a_service_that_stops_mid_stream_is_replaced_by_the_other(cond_dir, services):
    one, _ = services
    other = service(cond_dir)
    try:
        stream = ShardStream(f"{other.url},{one.url}")
    finally:
        other.close()  # shards 0, 2 and 4 were to come from it
    before = one.service.stats.requests
    served = list(stream)
    assert one.service.stats.requests - before == 5
    alone = list(ShardStream(one.url))
    assert len(served) == len(alone) == 20
    for (image, label), (again, again_label) in zip(served, alone, strict=True):
        assert torch.equal(image, again) and label == again_label


def test_services_differing_only_in_encoding_threads_serve_one_set(cond_dir, services):
    """encode_threads changes no byte of a shard: such services are mirrors of one set."""
    one, _ = services
    other = service(cond_dir, encode_threads=3)
    try:
        assert read_manifest([one.url, other.url]) == read_manifest(one.url)
    finally:
        other.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seed": 6}, "provenance.generate.seed = 5, not 6"),
        ({"num_images": 24}, "num_samples = 20, not 24"),
    ],
)
def test_a_service_of_another_set_is_refused_by_name(cond_dir, services, changes, field):
    from sio.train.sources import LocatedSet

    one, _ = services
    other = service(cond_dir, **changes)
    try:
        for reader in (read_manifest, LocatedSet.open):
            with pytest.raises(ShardError) as err:
                reader([one.url, other.url])
            message = str(err.value)
            assert "\n" not in message
            assert message.startswith(
                f"{one.url}/manifest.json and {other.url}/manifest.json describe different "
                "shard sets (changed: "
            )
            assert field in message
    finally:
        other.close()


class Counting(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        super().do_GET()


def static(folder):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Counting, directory=str(folder))
    )
    server.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_node_cache_keys_a_shard_by_its_content_not_its_mirror(tmp_path):
    from sio.train.stream import Fetcher

    folder = tmp_path / "set"
    rng = np.random.default_rng(1)
    with ShardSetWriter(
        folder,
        kind="synthetic",
        name="s",
        image_size=(8, 8),
        channels=1,
        class_names=CLASSES,
        shard_size=5,
    ) as writer:
        for i in range(20):
            writer.write(f"s{i:03d}", rng.integers(0, 255, (8, 8), dtype=np.uint8), i % 3, {})
    servers = [static(folder) for _ in range(2)]
    try:
        urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
        manifest = read_manifest(urls)
        fetcher = Fetcher(str(tmp_path / "cache"), None, 30.0)
        for url, shard in zip(shard_urls(urls, manifest), manifest.shards, strict=True):
            fetcher.read(url, shard.sha256)
        assert fetcher.fetched == sum(s.bytes for s in manifest.shards)
        shard_hits = [[h for h in s.hits if h.endswith(".tar")] for s in servers]
        assert [len(h) for h in shard_hits] == [2, 2]
        # the other order of mirrors, or one of them alone: every shard from the cache
        for location in (urls[::-1], urls[1]):
            fetcher.fetched = 0
            for url, shard in zip(shard_urls(location, manifest), manifest.shards, strict=True):
                fetcher.read(url, shard.sha256)
            assert fetcher.fetched == 0
        assert [len([h for h in s.hits if h.endswith(".tar")]) for s in servers] == [2, 2]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
