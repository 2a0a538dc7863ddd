"""What a run shows while it trains, from the records of ``log.jsonl`` (rank 0 only): a
one-line summary after each epoch, a final line, and TensorBoard event files in ``tb/``.

The event files are written from the same records as ``log.jsonl`` and, like it, rebuilt from
the checkpoint's history when a run starts or resumes (the old ones are removed), so a resumed
run shows each epoch once. Each numeric field of a record is one scalar at global step
``epoch`` (the log's, from 0), under the tag ``TAGS`` gives it (``data/<field>`` otherwise).
Without the ``tensorboard`` package the event files are skipped quietly.
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


def epoch_summary(record: dict, epochs: int) -> str:
    """``epoch 3/15  loss 0.412  acc 87.1% (real 88.0%, synthetic 83.5%)  val 91.2%  1,234
    img/s  lr 0.0962``; the parts a run has no data for are left out."""
    accuracy = f"acc {_percent(record['train_acc'])}"
    if record.get("synthetic_acc") is not None:
        parts = [
            f"{part} {_percent(record[f'{part}_acc'])}"
            for part in ("real", "synthetic")
            if record.get(f"{part}_acc") is not None
        ]
        accuracy += f" ({', '.join(parts)})"
    line = [f"epoch {record['epoch'] + 1}/{epochs}", f"loss {record['loss']:.3f}", accuracy]
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
        f"done: {len(history)} epochs, {duration(steps_time)} in training steps "
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


class TensorBoardLog:
    """``tb/`` event files of a run, one scalar per numeric log field and epoch."""

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, folder: Path, history: list[dict]) -> TensorBoardLog | None:
        """A writer in ``folder/tb`` holding ``history`` (earlier event files removed), or None
        when ``tensorboard`` is not installed."""
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
        log.writer.flush()
        return log

    def write(self, record: dict, flush: bool = True) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(tag(key), value, record["epoch"])
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
