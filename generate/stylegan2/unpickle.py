"""Read stylegan2-ada-pytorch network pickles as data; never run the code they carry.

NVIDIA's ``torch_utils.persistence`` pickles each network as a call
``_reconstruct_persistent_obj(meta)``, where ``meta`` holds ``type`` (``'class'``), ``version``,
``module_src`` (the source text of the module that defined the class), ``class_name`` and
``state`` (the module's ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, the init
arguments and plain attributes). Their loader ``exec``s ``module_src``; here that call becomes
a :class:`PersistedObject`, and the source text is only hashed.

Every global the pickle names goes through :data:`SAFE_GLOBALS`: the persistence hook, torch's
tensor and parameter rebuilders (storages are read by ``torch.load(weights_only=True)``),
``collections.OrderedDict``, ``builtins.set``, ``dnnlib.util.EasyDict`` (as a dict) and numpy's
scalar and dtype constructors. Any other global — ``os.system``, ``builtins.eval``,
``copyreg._reconstructor``, a class of NVIDIA's — stops the load with :class:`UnsafePickleError`
naming it, before anything is called.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class UnsafePickleError(ValueError):
    """The pickle names a global outside the allow-list; nothing it names was called."""


@dataclass
class PersistedObject:
    """A network from the pickle, as data: class name, state (``__dict__``), source hash."""

    class_name: str
    version: int
    state: dict
    source_sha256: str

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return plain(self.state.get("_init_kwargs") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers of this network and its submodules, by dotted name
        (the keys of ``state_dict()``)."""
        out = {}
        transient = self.state.get("_non_persistent_buffers_set") or set()
        buffers = {
            k: v for k, v in (self.state.get("_buffers") or {}).items() if k not in transient
        }
        for name, value in {**(self.state.get("_parameters") or {}), **buffers}.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{prefix}{name}: expected a tensor, got {type(value).__name__}")
            out[prefix + name] = value
        for name, child in (self.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistedObject):
                raise ValueError(f"{prefix}{name}: not a persisted network")
            out.update(child.tensors(f"{prefix}{name}."))
        return out


class EasyDictData(dict):
    """``dnnlib.util.EasyDict`` read back as a plain dict (attribute access is not needed)."""

    def __setstate__(self, state):
        if state:
            self.update(state)


def plain(value):
    """EasyDicts and OrderedDicts to dicts, tuples kept, recursively."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _reconstruct_persistent_obj(meta) -> PersistedObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise ValueError("a persisted object's meta must be a dict with type 'class'")
    source, name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(source, str) or not isinstance(name, str) or not isinstance(state, dict):
        raise ValueError("a persisted object's meta needs module_src, class_name and state")
    digest = hashlib.sha256(source.encode()).hexdigest()
    return PersistedObject(name, int(meta.get("version", 0)), dict(state), digest)


def _no_hooks(hooks) -> None:
    if hooks:
        raise UnsafePickleError("a tensor in the pickle carries backward hooks; refused")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *_):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"a tensor's storage is a {type(storage).__name__}")
    _no_hooks(hooks)
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
    """A parameter comes back as its plain tensor."""
    _no_hooks(hooks)
    return data


def _load_storage(data: bytes):
    """A storage pickled as ``torch.save`` bytes, read with torch's own safe loader."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafePickleError(f"an embedded storage was refused by torch.load: {err}") from None


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("only numeric numpy scalars are allowed in a network pickle")
    return np.frombuffer(data, dtype=dtype)[0].item()


SAFE_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("dnnlib.util", "EasyDict"): EasyDictData,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


# what a malformed (not malicious) pickle raises while loading
READ_ERRORS = (
    pickle.UnpicklingError,
    ValueError,
    RuntimeError,
    EOFError,
    TypeError,
    AttributeError,
)


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.where}: refusing global '{module}.{name}'. A stylegan2-ada-pytorch "
                "network pickle holds only networks, tensors and plain containers; this one "
                "names other code. Nothing from the file was executed."
            ) from None


def load_network_pickle(path: str | Path) -> dict:
    """The pickle's top-level dict (``G``, ``D``, ``G_ema``, … as :class:`PersistedObject`)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f, str(path)).load()
    except UnsafePickleError as err:
        if str(err).startswith(str(path)):
            raise
        raise UnsafePickleError(f"{path}: {err}") from None
    except READ_ERRORS as err:
        raise ValueError(f"{path}: not a readable network pickle: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of networks, got {type(data).__name__}")
    return data
