"""Reading a torch file (a checkpoint, a state dict): tensors only, one line when it cannot be.

Every ``.pt``/``.pth``/``.bin`` sio reads goes through ``load_weights``: ``torch.load`` with
``weights_only=True``, which refuses a pickle that would build anything but tensors and plain
containers, before anything in it runs. torch's own message for that ends with the advice to load
the file with ``weights_only=False`` (which would run whatever it holds); ``load_weights`` says
instead, in one line, which path was refused and why, and the same for a truncated, empty or
foreign file. Errors of the file system itself (no permission, ...) stay ``OSError``s.
"""

from __future__ import annotations

import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

# what garbage, a truncated file or a file of another format makes torch.load raise
_UNREADABLE = (
    EOFError,
    RuntimeError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    UnicodeDecodeError,
    struct.error,
    zipfile.BadZipFile,
)


class WeightsError(ValueError):
    """A torch file that cannot be read as tensors (shown as one ``Error:`` line)."""


def load_weights(path: str | Path, map_location="cpu", what: str = "PyTorch file"):
    """The content of the torch file ``path`` (tensors, dicts, lists, numbers, strings), read
    with ``weights_only=True``; a ``WeightsError`` naming ``path`` (as ``what``) and the cause if
    it is refused or cannot be read."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols before it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        cause = _unpickling_cause(str(err))
    except _UNREADABLE as err:
        cause = _unreadable_cause(err)
    raise WeightsError(f"{path}: not a readable {what}: {cause}")


def _unpickling_cause(message: str) -> str:
    if "Weights only load failed" not in message:
        return "truncated or corrupt pickle"
    named = re.search(r"GLOBAL ([\w.]+)", message)  # a pickle that would import and call it
    operand = re.search(r"operand (\d+)", message)  # garbage, or a pickle beyond tensors
    found = (
        f"a pickle that asks for {named.group(1)}"
        if named
        else f"a pickle beyond tensors (opcode {operand.group(1)})"
        if operand
        else "a pickle beyond tensors"
    )
    return f"{found}, refused by the weights-only load (nothing in it ran)"


def _unreadable_cause(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "empty or truncated"
    text = str(err)
    if "zip archive" in text or "central directory" in text or isinstance(err, zipfile.BadZipFile):
        return "truncated or corrupt (its zip archive cannot be read)"
    if isinstance(err, RuntimeError) and "PytorchStreamReader" in text:
        return "truncated or corrupt (a record in it cannot be read)"
    return f"truncated, corrupt or another format ({type(err).__name__})"
