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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared: modules
    of tiny-model tests take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
