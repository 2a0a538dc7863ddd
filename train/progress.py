"""What a run shows while it trains, from the records of ``log.jsonl`` (rank 0 only): a
one-line summary after each epoch, a final line, and TensorBoard event files in ``tb/``.

The event files are written from the same records as ``log.jsonl`` and, like it, rebuilt from
the checkpoint's history when a run starts or resumes (the old ones are removed), so a resumed
run shows each epoch once. Each numeric field of a record is one scalar at global step
``epoch`` (the log's, from 0), under the tag ``TAGS`` gives it (``data/<field>`` otherwise).
The event files also hold the run's hyperparameters (TensorBoard's HPARAMS tab: the train
config, alpha and seed, against the final accuracies) and a grid of the first real and synthetic
training images. Without the ``tensorboard`` package the event files are skipped quietly.

Epochs are counted from 0 everywhere: ``log.jsonl``, the console (``epoch 3 [0-14]``: epoch 3
of epochs 0 to 14), plots and TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

TB_FOLDER = "tb"
TAGS = {
    "loss": "loss/train",
    "real_loss": "loss/real",
    "synthetic_loss": "loss/synthetic",
    "train_acc": "acc/train",
    "real_acc": "acc/real",
    "synthetic_acc": "acc/synthetic",
    "val_acc": "acc/val",
    "lr": "lr",
    "images_per_s": "speed/images_per_s",
}


def tag(field: str) -> str:
    return TAGS.get(field, f"data/{field}")


def scalars(record: dict) -> dict[str, float]:
    """The numeric fields of a log record but its ``epoch`` (nulls and flags left out)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def epoch_label(epoch: int, epochs: int) -> str:
    """``epoch 3 [0-14]``: epoch ``epoch`` (from 0, as log.jsonl) of ``epochs``."""
    return f"epoch {epoch} [0-{epochs - 1}]"


def epoch_summary(record: dict, epochs: int) -> str:
    """``epoch 3 [0-14]  loss 0.412  acc 87.1% (real 88.0%, synthetic 83.5%)  val 91.2%  1,234
    img/s  lr 0.0962``; the parts a run has no data for are left out."""
    accuracy = f"acc {_percent(record['train_acc'])}"
    if record.get("synthetic_acc") is not None:
        parts = [
            f"{part} {_percent(record[f'{part}_acc'])}"
            for part in ("real", "synthetic")
            if record.get(f"{part}_acc") is not None
        ]
        accuracy += f" ({', '.join(parts)})"
    line = [epoch_label(record["epoch"], epochs), f"loss {record['loss']:.3f}", accuracy]
    if record.get("val_acc") is not None:
        line.append(f"val {_percent(record['val_acc'])}")
    line += [f"{record['images_per_s']:,.0f} img/s", f"lr {record['lr']:.3g}"]
    skipped = sum(v for k, v in record.items() if k.startswith("skipped_"))
    if skipped:
        line.append(f"skipped {skipped}")
    return "  ".join(line)


def duration(seconds: float) -> str:
    """``12.3s``, ``3m 12s``, ``2h 05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def final_summary(history: list[dict], checkpoint: Path, wall_seconds: float) -> str:
    """The line after the last epoch: epochs, the time spent in training steps (every epoch's,
    across resumes: its images over its images/s), this call's wall time, the last accuracy,
    the shards read, decoded and mapped from the decoded cache, and the checkpoint."""
    last = history[-1]
    steps_time = sum(
        (r["real_seen"] + r["synthetic_seen"]) / r["images_per_s"]
        for r in history
        if r.get("images_per_s")
    )
    accuracy = (
        f"final val acc {_percent(last['val_acc'])}"
        if last.get("val_acc") is not None
        else f"final train acc {_percent(last['train_acc'])} (no --val set)"
    )
    return (
        f"done: {len(history)} epochs [0-{len(history) - 1}], "
        f"{duration(steps_time)} in training steps "
        f"({duration(wall_seconds)} wall time in this call), {accuracy}{shard_loads(history)}, "
        f"checkpoint {checkpoint}"
    )


def shard_loads(history: list[dict]) -> str:
    """``, shards 12 read, 12 decoded, 96 from the decoded cache`` over the logged epochs
    (rowcache.py), or nothing for a log without the counters."""
    keys = ("shard_reads", "shard_decodes", "shard_cached")
    totals = [sum(r.get(key, 0) for r in history) for key in keys]
    if not any(totals):
        return ""
    return ", shards {:,} read, {:,} decoded, {:,} from the decoded cache".format(*totals)


SAMPLES = 32  # images per source in the sample grid
HPARAM_METRICS = ("train_acc", "val_acc", "loss")


def run_hparams(config, alpha: float, seed: int) -> dict:
    """The train config as flat ``field`` / ``section.field`` values TensorBoard takes (a
    number, a string or a bool; a list as its text), with ``alpha`` and ``seed``."""
    import dataclasses

    def flat(value, prefix: str) -> dict:
        if dataclasses.is_dataclass(value):
            return {
                k: v
                for f in dataclasses.fields(value)
                for k, v in flat(getattr(value, f.name), f"{prefix}{f.name}.").items()
            }
        key = prefix.rstrip(".")
        if value is None or isinstance(value, (bool, int, float, str)):
            return {key: "none" if value is None else value}
        return {key: str(value)}

    return {"alpha": float(alpha), "seed": int(seed), **flat(config, "")}


def first_images(source, count: int = SAMPLES):
    """The first ``count`` images (uint8 NxCxHxW) of a training source's first shard, or None
    when it cannot be read now (the training reads it and says why)."""
    import numpy as np

    from sio.shardset import shard_chunks

    manifest = source.manifest
    images, held = [], 0
    try:
        shard = manifest.shards[0]
        chunks = shard_chunks(source.urls[0], manifest.encoding, manifest.channels, None, shard)
        for chunk in chunks:
            images.append(chunk.images[: count - held])
            held += len(images[-1])
            if held >= count:
                break
        return np.concatenate(images) if images else None
    except Exception:  # noqa: BLE001 - a picture must never stop a run (nor name its fault)
        return None


class TensorBoardLog:
    """``tb/`` event files of a run, one scalar per numeric log field and epoch."""

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, folder: Path, history: list[dict], plan=None) -> TensorBoardLog | None:
        """A writer in ``folder/tb`` holding ``history`` (earlier event files removed) and, given
        the run's ``plan``, its hyperparameters and sample grids; None when ``tensorboard`` is
        not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        except Exception as err:  # noqa: BLE001 - a broken install (protobuf) must not stop training
            print(f"tensorboard is installed but does not load ({err!r}): no {TB_FOLDER}/ files")
            return None
        events = folder / TB_FOLDER
        for old in events.glob("events.out.tfevents.*"):
            old.unlink()
        log = cls(SummaryWriter(str(events)))
        for record in history:
            log.write(record, flush=False)
        if plan is not None:
            log.describe(plan)
        log.writer.flush()
        return log

    def describe(self, plan) -> None:
        """The run's hyperparameters (HPARAMS tab, against the accuracy scalars) and a grid of
        the first ``SAMPLES`` images of each training source (IMAGES tab, step 0)."""
        from torch.utils.tensorboard.summary import hparams

        params = run_hparams(plan.config, plan.alpha, plan.seed)
        for summary in hparams(params, {tag(m): 0.0 for m in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        for name, source in plan.sources.items():
            images = first_images(source)
            if images is not None:
                self.writer.add_images(f"samples/{name}", images, 0, dataformats="NCHW")

    def write(self, record: dict, flush: bool = True) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(tag(key), value, record["epoch"])
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
