"""The peers' side of ``python benchmarks/loader.py peers``: litdata, mosaicml-streaming and
webdataset fed the images of sio's benchmark sets, run in their own virtual environment.

Never imported by sio: ``loader.py peers`` creates the environment (``peer_python``), starts this
script in it and asks it for one measurement at a time over stdin/stdout (one JSON line each
way), so sio's and the peers' measurements alternate on the one machine. The environment sees
sio's venv (torch, Pillow, sio's ``random_crop_flip`` and ``decode_png``) through a ``.pth``
file; its own site-packages come first, so each peer gets the versions it pins.

Every peer gets the same images: its datasets are written here from sio's PNG shards under
ROOT (the same PNG bytes; the raw arrays are those bytes decoded once; about 1,000 samples per
chunk or shard, as sio's), webdataset reads sio's tars as they are. Each batch: B = 128, alpha
= 0.8 as close as the peer's own mixing allows (webdataset ``RandomMix`` and litdata
``CombinedStreamingDataset``: 0.8 in expectation; mosaic: two streams of proportion 0.8 / 0.2,
``batching_method="stratified"``: exact), a shuffle, sio's PNG decode, and sio's crop 4 + flip
on the collated uint8 batch in the worker (as sio's workers do).

Usage (by loader.py): python loader_peers.py ROOT; requests are JSON lines
``{"op": "versions" | "prepare" | "measure" | "quit", ...}``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sio.shardset.read import decode_png
from sio.train.augment import random_crop_flip

BATCH, ALPHA, SHUFFLE = 128, 0.8, 1000
SHARD = 1000  # samples per litdata chunk and (about) per mosaic shard, as sio's shards
KINDS = ("real", "synthetic")


def set_samples(folder: Path) -> list[tuple[bytes, int]]:
    """(PNG bytes, label) of every sample of one of sio's PNG sets, in shard order."""
    samples = []
    for shard in sorted(folder.glob("shard-*.tar")):
        members = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        samples += [(m["png"], int(m["cls"])) for m in members.values()]
    return samples


class Collate:
    """Stack a list of (uint8 CxHxW, label) and apply sio's crop 4 + flip (in the worker)."""

    def __init__(self):
        self.generator = None

    def __call__(self, samples):
        if self.generator is None:  # one per process, seeded by its pid
            self.generator = torch.Generator().manual_seed(os.getpid())
        images = torch.from_numpy(np.stack([s[0] for s in samples]))
        labels = torch.tensor([int(s[1]) for s in samples])
        return random_crop_flip(images, self.generator, padding=4, hflip=True), labels


def decoding(dataset_class, encoding: str):
    """A peer's dataset class whose items are (uint8 CxHxW image, label): a PNG decoded by
    sio's ``decode_png``, a raw array as it is."""

    class Decoding(dataset_class):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            image = decode_png(item["png"], 3) if encoding == "png" else item["image"]
            return image, item["label"]

    return Decoding


# --- webdataset: sio's tars as they are ----------------------------------------------------------


def webdataset_loader(root: Path, encoding: str, workers: int):
    import webdataset as wds

    def records(sample):
        images = np.load(io.BytesIO(sample["images.npy"]))
        return images, np.load(io.BytesIO(sample["labels.npy"]))

    parts = []
    for kind in KINDS:
        folder = root / f"{kind}-{'png' if encoding == 'png' else 'records'}"
        urls = [str(p) for p in sorted(folder.glob("shard-*.tar"))]
        pipe = wds.WebDataset(urls, shardshuffle=len(urls), seed=0, empty_check=False)
        if encoding == "png":
            pipe = pipe.map(lambda s: (decode_png(s["png"], 3), int(s["cls"])))
        else:
            pipe = pipe.map(records).unbatched()
        parts.append(pipe.shuffle(SHUFFLE).repeat())  # epoch after epoch, as the others
    mixed = wds.RandomMix(parts, probs=[ALPHA, 1 - ALPHA])
    return DataLoader(mixed, batch_size=BATCH, num_workers=workers, collate_fn=Collate())


# --- litdata: its own chunks ---------------------------------------------------------------------


def litdata_write(folder: Path, items) -> None:
    from litdata.streaming.writer import BinaryWriter

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    writer = BinaryWriter(str(folder), chunk_size=SHARD)
    for index, item in enumerate(items):
        writer.add_item(index, item)
    writer.done()
    writer.merge()


def litdata_dataset(folder: Path, encoding: str):
    from litdata import StreamingDataset

    return decoding(StreamingDataset, encoding)(str(folder), shuffle=True, seed=0)


def litdata_loader(root: Path, encoding: str, workers: int):
    from litdata import CombinedStreamingDataset, StreamingDataLoader

    parts = [litdata_dataset(root / "peers" / f"litdata-{encoding}-{k}", encoding) for k in KINDS]
    mixed = CombinedStreamingDataset(
        parts, seed=0, weights=(ALPHA, 1 - ALPHA), iterate_over_all=False
    )
    return StreamingDataLoader(
        mixed, batch_size=BATCH, num_workers=workers, collate_fn=Collate(), drop_last=True
    )


# --- mosaicml-streaming: MDS shards --------------------------------------------------------------


def mosaic_write(folder: Path, columns: dict, items) -> None:
    from streaming import MDSWriter

    shutil.rmtree(folder, ignore_errors=True)
    items = iter(items)
    first = next(items)
    size = sum(len(v) if isinstance(v, bytes) else getattr(v, "nbytes", 8) for v in first.values())
    with MDSWriter(out=str(folder), columns=columns, size_limit=SHARD * size) as writer:
        for item in (first, *items):
            writer.write(item)


_MOSAIC: dict = {}  # one StreamingDataset per (encoding, workers): see mosaic_dataset


def mosaic_dataset(root: Path, encoding: str, workers: int, epoch_size: int):
    """Mosaic refuses a second dataset on a local folder in one process, and one dataset
    iterated in this process then through workers hangs: so one dataset per number of
    workers, each on its own copy of the MDS folders."""
    if (encoding, workers) in _MOSAIC:
        return _MOSAIC[encoding, workers]
    from streaming import Stream, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()

    streams = []
    for kind, share in zip(KINDS, (ALPHA, 1 - ALPHA), strict=True):
        folder = root / "peers" / f"mosaic-{encoding}-{kind}"
        local = folder.with_name(f"{folder.name}-w{workers}")
        if not local.exists():
            shutil.copytree(folder, local)
        streams.append(Stream(local=str(local), proportion=share))
    _MOSAIC[encoding, workers] = decoding(StreamingDataset, encoding)(
        streams=streams,
        epoch_size=epoch_size,
        batch_size=BATCH,
        shuffle=True,
        shuffle_seed=0,
        batching_method="stratified",
    )
    return _MOSAIC[encoding, workers]


def mosaic_loader(root: Path, encoding: str, workers: int, epoch_size: int):
    dataset = mosaic_dataset(root, encoding, workers, epoch_size)
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=Collate())


# --- the protocol --------------------------------------------------------------------------------


class Peers:
    def __init__(self, root: Path):
        self.root = root
        self.sizes = {}

    def prepare(self) -> dict:
        """Write litdata's and mosaic's datasets from sio's PNG sets; seconds each took."""
        took = {}
        for kind in KINDS:
            samples = set_samples(self.root / f"{kind}-png")
            self.sizes[kind] = len(samples)
            arrays = [(decode_png(png, 3), label) for png, label in samples]
            start = time.perf_counter()
            png_items = ({"png": png, "label": label} for png, label in samples)
            raw_items = ({"image": image, "label": label} for image, label in arrays)
            litdata_write(self.root / "peers" / f"litdata-png-{kind}", png_items)
            litdata_write(self.root / "peers" / f"litdata-raw-{kind}", raw_items)
            took[f"litdata {kind}"] = time.perf_counter() - start
            start = time.perf_counter()
            mosaic_write(
                self.root / "peers" / f"mosaic-png-{kind}",
                {"png": "bytes", "label": "int"},
                ({"png": png, "label": label} for png, label in samples),
            )
            shape = ",".join(map(str, arrays[0][0].shape))
            mosaic_write(
                self.root / "peers" / f"mosaic-raw-{kind}",
                {"image": f"ndarray:uint8:{shape}", "label": "int"},
                ({"image": image, "label": label} for image, label in arrays),
            )
            took[f"mosaic {kind}"] = time.perf_counter() - start
        return {"seconds": took, "sizes": self.sizes}

    def loader(self, peer: str, encoding: str, workers: int):
        if peer == "webdataset":
            return webdataset_loader(self.root, encoding, workers)
        if peer == "litdata":
            return litdata_loader(self.root, encoding, workers)
        epoch = max(sum(self.sizes.values()), 256 * BATCH)  # an epoch outlasts a measurement
        return mosaic_loader(self.root, encoding, workers, epoch)

    def measure(self, peer: str, encoding: str, workers: int, batches: int, warmup: int) -> dict:
        loader = self.loader(peer, encoding, workers)
        return measure(loader, batches, warmup)


def measure(loader, batches: int, warmup: int) -> dict:
    """Images per wall second over ``batches`` batches (sio's dicts or the peers' (images,
    labels)) after ``warmup`` ones (worker start-up and first shard reads excluded)."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    wall, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator)
        images += len(batch["labels"] if isinstance(batch, dict) else batch[1])
    wall = time.perf_counter() - wall
    del iterator
    return {"images": images, "wall": wall, "images_per_s": images / wall}


def versions() -> dict:
    from importlib.metadata import version

    names = ("litdata", "mosaicml-streaming", "webdataset", "torch", "numpy", "pillow")
    return {name: version(name) for name in names} | {"python": sys.version.split()[0]}


def main() -> None:
    root = Path(sys.argv[1])
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the peers print goes to stderr; stdout carries the answers
    torch.set_num_threads(1)  # what a DataLoader worker runs with, as in sio's measurements
    peers = Peers(root)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            if op == "versions":
                result = versions()
            elif op == "prepare":
                result = peers.prepare()
            else:
                result = peers.measure(**request)
        except Exception as error:  # noqa: BLE001 - reported to loader.py, which shows it
            result = {"error": f"{type(error).__name__}: {error}"}
        answer.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
