"""``sio plot RUN``: the curves of a ``log.jsonl`` as one PNG, with its PDF and SVG beside it.

RUN is a ``log.jsonl`` file or a folder holding one: a ``sio train`` run folder (one line per
epoch) or a DDPM training folder (lines with ``step``, ``loss``, ``lr``: ``sio run`` keeps it in
the generator's stage folder, ``sio generate --train-on`` in ``DIR.training`` beside the weights
folder DIR, which RUN may also name); a folder without one of its own is searched one level
down. The
x axis is ``epoch`` when every line has one, else ``step``, else the line number. Every numeric
field is drawn: the losses in one panel, the accuracies (``*_acc``, in %) in another, the
learning rate, images/s, and any other field that changes over the log in a panel of its own
(fields constant over the log, such as ``ranks``, are left out, and so are ``shard_*``: what the
node's cache did, not the training). A null (a part a run had no
data for) leaves a gap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sio.core.figures import save_figure

LOG = "log.jsonl"
X_KEYS = ("epoch", "step")


def find_log(run: str | Path) -> Path:
    """The ``log.jsonl`` that RUN names (the file, in the folder, in ``RUN.training`` beside
    DDPM weights, or one level down)."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such file or folder")
    if (run / LOG).is_file():
        return run / LOG
    training = run.with_name(run.name + ".training") / LOG  # beside generated DDPM weights
    if training.is_file():
        return training
    below = sorted(run.glob(f"*/{LOG}"))
    if len(below) == 1:
        return below[0]
    if below:
        names = ", ".join(str(p) for p in below)
        raise ValueError(f"{run}: no {LOG} of its own and several below ({names}); name one")
    raise FileNotFoundError(
        f"{run / LOG}: no such file (`sio train --out DIR` writes DIR/{LOG} after each epoch)"
    )


def read_log(path: Path) -> list[dict]:
    """The records of a ``log.jsonl``; a clear error naming the file for an empty or garbled
    one."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file ({error.reason})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}, line {number}: a JSON {type(record).__name__}, not an object"
            )
        records.append(record)
    if not records:
        raise ValueError(f"{path}: empty log (no epoch or step has been logged yet)")
    return records


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _x_axis(records: list[dict]) -> tuple[str, list[float]]:
    for key in X_KEYS:
        values = [_number(r.get(key)) for r in records]
        if all(v is not None for v in values):
            return key, values
    return "line", [float(i) for i in range(1, len(records) + 1)]


def panels(records: list[dict]) -> tuple[str, list[float], list[tuple[str, dict[str, list]]]]:
    """(x label, x values, [(panel title, {field: y values with NaN gaps})]) of a log."""
    x_key, xs = _x_axis(records)
    fields = []
    for record in records:
        fields += [k for k, v in record.items() if k not in fields and _number(v) is not None]
    fields = [f for f in fields if f not in (x_key, *X_KEYS) and not f.startswith("shard_")]
    series = {}
    for field in fields:
        values = [_number(r.get(field)) for r in records]
        series[field] = [math.nan if v is None else v for v in values]
    groups: dict[str, dict[str, list]] = {}
    for field, ys in series.items():
        if "loss" in field:
            title = "loss"
        elif field.endswith("_acc") or field == "acc":
            title, ys = "accuracy (%)", [100 * y for y in ys]
        elif field == "lr":
            title = "learning rate"
        elif field == "images_per_s":
            title = "images / s"
        else:
            present = {y for y in ys if not math.isnan(y)}
            if len(present) <= 1:
                continue  # constant over the log (steps, ranks, an unused counter)
            title = field
        groups.setdefault(title, {})[field] = ys
    if not groups:
        raise ValueError("no numeric field to plot")
    return x_key, xs, list(groups.items())


def plot_log(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw the curves of RUN's ``log.jsonl`` into ``out`` (default: ``log.png`` beside the
    log); returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = find_log(run)
    records = read_log(path)
    try:
        x_key, xs, groups = panels(records)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    columns = 2 if len(groups) > 1 else 1
    rows = math.ceil(len(groups) / columns)
    figure = Figure(figsize=(5.5 * columns, 3.8 * rows), dpi=110, layout="constrained")
    marker = "o" if len(records) < 30 else None
    for index, (title, lines) in enumerate(groups, 1):
        axes = figure.add_subplot(rows, columns, index)
        for field, ys in lines.items():
            axes.plot(xs, ys, label=field, marker=marker, markersize=3, linewidth=1.4)
        if title == "learning rate" and all(y > 0 for y in lines["lr"] if not math.isnan(y)):
            axes.set_yscale("log")
        axes.set_title(title, fontsize=10)
        axes.set_xlabel(x_key)
        axes.grid(alpha=0.3)
        if len(lines) > 1 or title != next(iter(lines)):  # below the axes: it hides no line
            axes.legend(
                fontsize=8,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.2),
                ncol=min(3, len(lines)),
                frameon=False,
            )
    figure.suptitle(f"training curves: {path}", fontsize=10)
    target = Path(out) if out is not None else path.with_name("log.png")
    try:
        save_figure(figure, target, tight=False)  # and log.pdf, log.svg; constrained layout
    except (IsADirectoryError, PermissionError, NotADirectoryError) as err:
        raise ValueError(f"{target}: cannot write the plot ({err.strerror})") from err
    return target
