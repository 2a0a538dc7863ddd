"""The one way a long step shows its progress: ``progress(...)``, a tqdm bar with a total and a
rate, made calm where no one watches it.

- stderr a terminal: a live tqdm bar (carriage returns, redrawn a few times a second).
- stderr a file or a pipe (a log, ``2> train.log``, a batch job): one plain line every
  ``SIO_PROGRESS_INTERVAL`` seconds (default 30) and one when the step ends,
  ``epoch 3: 40/100 batch (40%) [00:12<00:18, 3.3 batch/s]``; no carriage return.
- ``SIO_PROGRESS=0`` (which ``sio --quiet`` sets, so child processes inherit it) or
  ``TQDM_DISABLE=1``: no progress at all; the summary lines stay.

``progress_write(line)`` prints a line above a live bar (tqdm.write) without breaking it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

ENV_SWITCH = "SIO_PROGRESS"  # "0": no bars
ENV_INTERVAL = "SIO_PROGRESS_INTERVAL"  # seconds between lines when stderr is not a terminal
DEFAULT_INTERVAL = 30.0
LINE_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) "
    "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
LINE_FORMAT_OPEN = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"  # no total known


def enabled() -> bool:
    """False under ``SIO_PROGRESS=0`` (``sio --quiet``) or ``TQDM_DISABLE=1``."""
    off = ("0", "false", "no", "off")
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in off and os.environ.get(
        "TQDM_DISABLE", ""
    ).strip().lower() in ("", *off)


def interval() -> float:
    """Seconds between two lines of a bar whose stderr is not a terminal."""
    text = os.environ.get(ENV_INTERVAL, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


class LineBar(tqdm):
    """A tqdm bar that prints whole lines (never a carriage return): one at most every
    ``mininterval`` seconds while it moves, and the last state when it closes."""

    monitor_interval = 0  # no monitor thread redrawing behind our back

    def __init__(self, *args, **kwargs):
        self._printed_n = None
        super().__init__(*args, **kwargs)
        self._printed_n = self.n  # nothing worth a line before the first step

    def display(self, msg=None, pos=None):
        if self._printed_n is None or self.n == self._printed_n:
            return False  # construction, or nothing new since the last line
        self._printed_n = self.n
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        return False  # close() writes no '\r' after a line

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown in the next line

    def clear(self, nolock=False):  # a line, once written, stays
        pass

    def moveto(self, n):  # lines are never positioned
        pass


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    initial: float = 0,
    leave: bool = False,
    disable: bool = False,
) -> tqdm:
    """A bar over ``iterable`` (or updated by hand), with ``total`` (taken from
    ``len(iterable)`` when it has one) and a rate: live on a terminal, a line every few seconds
    elsewhere, nothing when progress is switched off (or ``disable``)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    off = disable or not enabled()
    common = dict(total=total, desc=desc, unit=unit, initial=initial, disable=off)
    if off or _stderr_is_terminal():
        return tqdm(iterable, leave=leave, **common)
    every = interval()
    return LineBar(
        iterable,
        file=sys.stderr,
        leave=False,
        mininterval=every,
        maxinterval=max(every, 1.0),
        miniters=1,
        ascii=True,
        bar_format=LINE_FORMAT if total else LINE_FORMAT_OPEN,
        unit_divisor=1000,
        **common,
    )


def progress_write(line: str) -> None:
    """Print ``line`` to stdout without breaking a live bar."""
    tqdm.write(line)
