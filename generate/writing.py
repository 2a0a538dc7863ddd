"""Writing a shard of a generation job: the encoder threads beside the sampler and the one tar
writer thread, over the shard-set contract's ``ShardFileWriter`` (a PNG per image, or one
record of raw images per sampled batch).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sio.generate.images import Batch, image_batches
from sio.generate.job import Job
from sio.shardset import ShardFileWriter, encode_png
from sio.shardset.records import record_key


def _write_png_batch(writer: ShardFileWriter, encoders, batch: Batch, name: str) -> None:
    """PNG-encode a batch in the encoder threads and write it sample by sample."""
    arrays = batch.images.permute(0, 2, 3, 1).numpy()
    if arrays.shape[-1] == 1:
        arrays = arrays[..., 0]
    for png, label, meta in zip(
        encoders.map(encode_png, arrays), batch.labels.tolist(), batch.metas, strict=True
    ):
        writer.write(
            f"syn-{meta['index']:08d}",
            png,
            label,
            {"source": "synthetic", "generator": name, **meta},
        )
    writer.add_pixels(batch.images.numpy())


def _write_record(writer: ShardFileWriter, encoders, batch: Batch, name: str) -> None:
    """Write a batch as one record of raw uint8 images (no image encoding)."""
    keys = [f"syn-{meta['index']:08d}" for meta in batch.metas]
    provenance = [{"source": "synthetic", "generator": name, **meta} for meta in batch.metas]
    first = record_key(batch.metas[0]["index"])
    writer.write_record(first, batch.images.numpy(), batch.labels.numpy(), keys, provenance)


@dataclass
class Workers:
    """The threads beside the sampler: image encoders and the one tar writer."""

    encoders: ThreadPoolExecutor
    writer: ThreadPoolExecutor
    waited_s: float = 0.0

    @classmethod
    def start(cls, encode_threads: int) -> Workers:
        return cls(ThreadPoolExecutor(encode_threads), ThreadPoolExecutor(1))

    def close(self) -> None:
        self.encoders.shutdown()
        self.writer.shutdown()

    def wait(self, future: Future) -> None:
        start = time.perf_counter()
        future.result()
        self.waited_s += time.perf_counter() - start


def write_shard(job: Job, index: int, path: Path, workers: Workers, progress=None) -> dict:
    """Generate shard ``index`` to ``path`` (under ``path.tmp`` until complete); returns its
    progress record: stats, label agreement and how many images it was judged on."""
    writer = ShardFileWriter(path, len(job.class_names), job.generator.channels)
    write = _write_record if job.config.encoding == "records" else _write_png_batch
    pending: list[Future] = []
    agree, drawn = 0, None
    step = progress.update if progress is not None else None  # per network call (per batch)
    try:
        for batch in image_batches(job, job.shard_samples(index), step):
            agree += batch.agree
            if batch.drawn is not None:
                drawn = batch.drawn if drawn is None else drawn + batch.drawn
            if len(pending) >= 2:  # at most two batches waiting for the writer
                workers.wait(pending.pop(0))
            pending.append(
                workers.writer.submit(write, writer, workers.encoders, batch, job.generator.name)
            )
        for future in pending:
            workers.wait(future)
    except BaseException:
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()
        writer.abort()
        raise
    stats = writer.close()
    if drawn is not None:  # filtered: judged are the candidates drawn, kept or not
        record = {"stats": stats.to_json(), "agree": agree, "judged": int(drawn.sum())}
        return {**record, "drawn_per_class": drawn.tolist()}
    # label agreement judges conditioning labels; pseudo-labels agree with the classifier by design
    judged = (
        stats.shard.num_samples if job.classifier is not None and job.generator.conditional else 0
    )
    return {"stats": stats.to_json(), "agree": agree, "judged": judged}
