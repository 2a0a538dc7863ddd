"""Where a StyleGAN2-ADA generator comes from: a network pickle or sio's safetensors export.

- a ``.pkl`` of NVlabs/stylegan2-ada-pytorch (a training snapshot or a ``pretrained/`` file),
  read by the restricted unpickler (unpickle.py): its ``G_ema`` becomes init arguments
  plus tensors, with no code run; or a folder holding exactly one such ``.pkl``;
- a folder with ``stylegan2.safetensors`` (the state dict) and ``stylegan2.json`` (format
  ``sio-stylegan2/1``, the init arguments and the source pickle's sha256), written by
  ``sio stylegan2-export``: no pickle at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sio.generate.stylegan2.network import StyleGAN2
from sio.generate.stylegan2.spec import GeneratorSpec
from sio.generate.stylegan2.unpickle import PersistedObject, load_network_pickle

EXPORT_WEIGHTS, EXPORT_META = "stylegan2.safetensors", "stylegan2.json"
EXPORT_FORMAT = "sio-stylegan2/1"
GENERATOR_ARGS = (
    "z_dim",
    "c_dim",
    "w_dim",
    "img_resolution",
    "img_channels",
    "mapping_kwargs",
    "synthesis_kwargs",
)
LAYOUT = (
    "a stylegan2-ada generator is a .pkl file (a stylegan2-ada-pytorch network pickle), a "
    f"folder holding exactly one, or a folder with {EXPORT_WEIGHTS} + {EXPORT_META} "
    "(written by `sio stylegan2-export`)"
)


def locate(path: str | Path) -> tuple[str, Path]:
    """``("pickle", file)`` or ``("export", folder)``; FileNotFoundError naming the layout."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".pkl":
            raise ValueError(f"{path}: not a .pkl file; {LAYOUT}")
        return "pickle", path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found; {LAYOUT}")
    present = [(path / n).is_file() for n in (EXPORT_WEIGHTS, EXPORT_META)]
    if any(present):
        if not all(present):
            missing = EXPORT_META if present[0] else EXPORT_WEIGHTS
            raise FileNotFoundError(f"{path / missing}: missing; {LAYOUT}")
        return "export", path
    pickles = sorted(path.glob("*.pkl"))
    if len(pickles) != 1:
        raise FileNotFoundError(f"{path}: {len(pickles)} .pkl files and no export; {LAYOUT}")
    return "pickle", pickles[0]


def read_pickle(path: str | Path, network: str = "G_ema"):
    """(GeneratorSpec, state dict) of ``network`` in a stylegan2-ada-pytorch pickle."""
    data = load_network_pickle(path)
    obj = data.get(network)
    if not isinstance(obj, PersistedObject):
        raise ValueError(f"{path}: no network {network!r}; the pickle holds {sorted(data)}")
    if obj.class_name != "Generator":
        raise ValueError(f"{path}: {network} is a {obj.class_name}, not a Generator")
    if len(obj.init_args) > len(GENERATOR_ARGS):
        raise ValueError(f"{path}: {network} has {len(obj.init_args)} positional init arguments")
    positional = dict(zip(GENERATOR_ARGS, obj.init_args, strict=False))
    kwargs = {**positional, **obj.init_kwargs}
    try:
        spec = GeneratorSpec.from_kwargs(kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: {network}: {err}") from None
    return spec, obj.tensors()


def read_export(folder: str | Path):
    """(GeneratorSpec, state dict, meta) from ``stylegan2.json`` + ``stylegan2.safetensors``."""
    folder = Path(folder)
    meta_path = folder / EXPORT_META
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{meta_path}: expected format {EXPORT_FORMAT!r}")
    try:
        spec = GeneratorSpec.from_kwargs(meta.get("init_kwargs") or {})
    except ValueError as err:
        raise ValueError(f"{meta_path}: {err}") from None
    return spec, load_file(folder / EXPORT_WEIGHTS), meta


def build_network(spec: GeneratorSpec, state: dict[str, torch.Tensor], where) -> StyleGAN2:
    """The network with ``state`` loaded under a strict key and shape check."""
    network = StyleGAN2(spec)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{where}: the weights do not fit a StyleGAN2-ADA generator built from its init "
            f"arguments ({spec.img_resolution}x{spec.img_resolution}, z {spec.z_dim}, "
            f"c {spec.c_dim}, w {spec.w_dim}): {err}"
        ) from None
    return network.eval().requires_grad_(False)


def load_network(path: str | Path, network: str = "G_ema") -> tuple[StyleGAN2, Path]:
    """The generator and the file its weights came from (for the checksum)."""
    kind, where = locate(path)
    if kind == "pickle":
        spec, state = read_pickle(where, network)
        return build_network(spec, state, where), where
    spec, state, _ = read_export(where)
    return build_network(spec, state, where / EXPORT_WEIGHTS), where / EXPORT_WEIGHTS
