"""StyleGAN2-ADA: the restricted unpickler, equality with NVIDIA's outputs, the adapter, the export.

tests/data/stylegan2_*.safetensors hold only data made once by NVlabs/stylegan2-ada-pytorch on
CPU (random, perturbed weights): a generator's init arguments and state dict, inputs, and its
float32 outputs (``force_fp32=True``) for three (ψ, cutoff, noise mode) cases. The tests build
their network pickles themselves, in the format of ``torch_utils.persistence``, with stand-in
modules that exist only while pickling.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from sio.cli import get_cli
from sio.core.config import ConfigError, parse_dataclass
from sio.core.files import sha256_file
from sio.generate import StyleGAN2Generator, export_safetensors, generate_shard_set
from sio.generate.config import GenerateConfig, GeneratorConfig, StyleGAN2Settings
from sio.generate.registry import load_generator, weights_fingerprint
from sio.generate.stylegan2.load import build_network, read_pickle
from sio.generate.stylegan2.spec import GeneratorSpec
from sio.generate.stylegan2.unpickle import UnsafePickleError, load_network_pickle
from sio.shardset import iter_samples, verify_shard_set

DATA = Path(__file__).parent / "data"
BUFFERS = ("w_avg", "noise_const", "resample_filter")
SOURCE = "raise SystemExit('the embedded source must never run')\n"


def load_case(name: str):
    """(init kwargs, cases, state dict, z, c, expected outputs) of a stored configuration."""
    with safe_open(DATA / f"stylegan2_{name}.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["sio"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    state = {k[len("state/") :]: v for k, v in tensors.items() if k.startswith("state/")}
    expected = [tensors[f"expected/{i}"] for i in range(len(meta["cases"]))]
    return (
        meta["init_kwargs"],
        meta["cases"],
        state,
        tensors["inputs/z"],
        tensors["inputs/c"],
        expected,
    )


# --- pickles in the persistence format, built here ------------------------------------------


class EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict while pickling."""


def _reconstruct_persistent_obj(meta):  # never called: the loader maps this name to data
    raise AssertionError("the stand-in persistence hook must not run")


class Persisted:
    """Pickles the way ``torch_utils.persistence`` does: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, class_name, state, source=SOURCE):
        self.class_name, self.state, self.source = class_name, state, source

    def __reduce__(self):
        meta = {
            "type": "class",
            "version": 6,
            "module_src": self.source,
            "class_name": self.class_name,
            "state": self.state,
        }
        return _reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def stand_in_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` exist only while pickling."""
    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": types.ModuleType("dnnlib.util"),
    }
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    modules["dnnlib.util"].EasyDict = EasyDict
    saved = {
        (_reconstruct_persistent_obj, "__module__"): _reconstruct_persistent_obj.__module__,
        (EasyDict, "__module__"): EasyDict.__module__,
    }
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    EasyDict.__module__ = "dnnlib.util"
    previous = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in previous.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
        for (obj, attr), value in saved.items():
            setattr(obj, attr, value)


def module_state(params, buffers, children, init_kwargs=None):
    hooks = ("_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks")
    return {
        "training": False,
        "_parameters": OrderedDict(params),
        "_buffers": OrderedDict(buffers),
        "_non_persistent_buffers_set": set(),
        **{hook: OrderedDict() for hook in hooks},
        "_modules": OrderedDict(children),
        "_init_args": (),
        "_init_kwargs": EasyDict(init_kwargs or {}),
        "weight_gain": np.float64(0.25),  # NVIDIA's layers keep numpy scalars as attributes
    }


def persisted_tree(state, class_name="Generator", init_kwargs=None, prefix=""):
    """Nested persisted modules from a flat state dict (children from the dotted names)."""
    direct = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    leaves = {k: v for k, v in direct.items() if "." not in k}
    params = {
        k: torch.nn.Parameter(v.clone(), requires_grad=False)
        for k, v in leaves.items()
        if k not in BUFFERS
    }
    buffers = {k: v.clone() for k, v in leaves.items() if k in BUFFERS}
    children = {}
    for child in dict.fromkeys(k.split(".")[0] for k in direct if "." in k):
        children[child] = persisted_tree(state, "Layer", None, f"{prefix}{child}.")
    return Persisted(class_name, module_state(params, buffers, children, init_kwargs))


def easy_kwargs(kwargs):
    return EasyDict({k: EasyDict(v) if isinstance(v, dict) else v for k, v in kwargs.items()})


def write_pickle(path, kwargs, state, *, protocol=3, source=SOURCE, hidden=None):
    """A training snapshot like NVIDIA's: {training_set_kwargs, G, D, G_ema, augment_pipe};
    ``hidden`` goes into the generator's state."""
    G = persisted_tree(state, init_kwargs=easy_kwargs(kwargs))
    G.source = source
    if hidden is not None:
        G.state["hidden"] = hidden
    D = Persisted("Discriminator", module_state({"w": torch.nn.Parameter(torch.ones(2))}, {}, {}))
    data = {"training_set_kwargs": {"resolution": 16}, "G": G, "D": D, "G_ema": G}
    data["augment_pipe"] = None
    with stand_in_modules(), open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


@pytest.fixture(scope="module")
def cond_pkl(tmp_path_factory):
    kwargs, _, state, *_ = load_case("cond16")
    return write_pickle(tmp_path_factory.mktemp("pkl") / "network-snapshot.pkl", kwargs, state)


# --- the restricted unpickler -----------------------------------------------------------------


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize(
    ("payload", "named"),
    [(RunsCommand, r"(posix|nt)\.system"), (CallsEval, r"builtins\.eval")],
)
def test_a_pickle_that_runs_a_command_is_refused_and_nothing_runs(tmp_path, payload, named):
    marker = tmp_path / "ran"
    kwargs, _, state, *_ = load_case("uncond8")
    # at the top level, and hidden inside a network's state
    top = tmp_path / "top.pkl"
    top.write_bytes(pickle.dumps({"G_ema": payload(marker)}, protocol=3))
    nested = write_pickle(tmp_path / "nested.pkl", kwargs, state, hidden=payload(marker))
    for path in (top, nested):
        with pytest.raises(UnsafePickleError, match=rf"{path}: refusing global '{named}'"):
            read_pickle(path)
    assert not marker.exists()


def test_other_globals_are_refused_by_name(tmp_path):
    path = tmp_path / "module.pkl"
    path.write_bytes(pickle.dumps({"G_ema": torch.nn.Linear(2, 2)}, protocol=3))
    with pytest.raises(UnsafePickleError, match=r"refusing global 'torch\.nn\.modules"):
        load_network_pickle(path)


def test_embedded_source_is_kept_as_a_hash_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('ran')\n"
    kwargs, _, state, *_ = load_case("uncond8")
    path = write_pickle(tmp_path / "net.pkl", kwargs, state, source=source)
    G = load_network_pickle(path)["G_ema"]
    assert G.source_sha256 == hashlib.sha256(source.encode()).hexdigest()
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [3, 5])
def test_persistence_format_becomes_data(tmp_path, protocol):
    kwargs, _, state, *_ = load_case("cond16")
    path = write_pickle(tmp_path / "net.pkl", kwargs, state, protocol=protocol)
    data = load_network_pickle(path)
    assert sorted(data) == ["D", "G", "G_ema", "augment_pipe", "training_set_kwargs"]
    G = data["G_ema"]
    assert G.class_name == "Generator" and G.version == 6
    assert G.init_kwargs == kwargs and type(G.init_kwargs["mapping_kwargs"]) is dict
    assert G.state["weight_gain"] == 0.25 and type(G.state["weight_gain"]) is float
    tensors = G.tensors()
    assert sorted(tensors) == sorted(state)
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    assert type(tensors["mapping.fc0.weight"]) is torch.Tensor  # a Parameter comes back as data
    assert data["D"].class_name == "Discriminator"


def test_not_a_pickle_and_not_a_generator(tmp_path, cond_pkl):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x03not a pickle at all")
    with pytest.raises(ValueError, match="junk.pkl: not a readable network pickle"):
        read_pickle(junk)
    with pytest.raises(ValueError, match=r"no network 'G_big'; the pickle holds \['D', 'G'"):
        read_pickle(cond_pkl, "G_big")
    with pytest.raises(ValueError, match="D is a Discriminator, not a Generator"):
        read_pickle(cond_pkl, "D")
    kwargs, _, state, *_ = load_case("uncond8")
    kwargs["synthesis_kwargs"]["num_critical"] = 2  # a StyleGAN3 argument
    path = write_pickle(tmp_path / "sg3.pkl", kwargs, state)
    with pytest.raises(ValueError, match=r"unsupported synthesis_kwargs arguments \['num_crit"):
        read_pickle(path)


# --- the network against NVIDIA's outputs ---------------------------------------------------


@pytest.mark.parametrize("name", ["cond16", "uncond8", "resnet8"])
def test_equal_to_nvidia_float32_outputs(tmp_path, name):
    kwargs, cases, state, z, c, expected = load_case(name)
    spec, loaded = read_pickle(write_pickle(tmp_path / "net.pkl", kwargs, state))
    network = build_network(spec, loaded, name)
    for (psi, cutoff, noise_mode), want in zip(cases, expected, strict=True):
        with torch.no_grad():
            got = network(z, c if spec.c_dim else None, psi, cutoff, noise_mode)
        assert (got - want).abs().max() < 1e-4, (name, psi, cutoff, noise_mode)


def test_truncation_and_noise_modes():
    kwargs, _, state, z, c, _ = load_case("cond16")
    network = build_network(GeneratorSpec.from_kwargs(kwargs), state, "cond16")
    with torch.no_grad():
        run = lambda psi=1.0, mode="const", gen=None: network(z, c, psi, None, mode, gen)  # noqa: E731
        assert torch.equal(run(), run())  # const noise: deterministic
        assert not torch.allclose(run(), run(mode="none"))
        assert not torch.allclose(run(), run(psi=0.5))
        same = run(0.0)  # psi 0: every w is w_avg, so every image is the same
        assert torch.allclose(same, same[:1].expand_as(same), atol=1e-6)
        seeded = [run(mode="random", gen=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
        assert torch.equal(seeded[0], seeded[1]) and not torch.allclose(seeded[0], seeded[2])


# --- the generate-stage adapter, the export ---------------------------------------------------


def test_adapter_samples_like_nvidias_generate_script(cond_pkl):
    settings = StyleGAN2Settings(truncation_psi=0.7)
    model = StyleGAN2Generator.from_pretrained(cond_pkl, settings=settings)
    assert (model.conditional, model.num_classes, model.channels, model.image_size) == (
        True,
        3,
        3,
        16,
    )
    images = model.sample(3, torch.tensor([2, 0, 1]), seed=5)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    # one seed per image, as NVIDIA's generate.py --seeds=5,6,7
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(16) for s in (5, 6, 7)]))
    z = z.float()
    c = torch.eye(3)[[2, 0, 1]]
    with torch.no_grad():
        want = (model.network(z, c, 0.7) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert torch.equal(images, want)
    assert torch.equal(model.sample(3, torch.tensor([2, 0, 1]), 5), images)
    assert not torch.equal(model.sample(3, torch.tensor([0, 0, 0]), 5), images)
    for bad in (None, torch.tensor([0, 1]), torch.tensor([0, 1, 3])):
        with pytest.raises(ValueError, match="labels"):
            model.sample(3, bad, 5)
    small = StyleGAN2Generator.from_pretrained(cond_pkl, image_size=8)
    assert small.sample(2, torch.tensor([0, 1]), 5).shape == (2, 3, 8, 8)


def test_unconditional_adapter_takes_no_labels(tmp_path):
    kwargs, _, state, *_ = load_case("uncond8")
    model = StyleGAN2Generator.from_pretrained(write_pickle(tmp_path / "u.pkl", kwargs, state))
    assert not model.conditional and model.sample(2, None, 0).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, torch.tensor([0, 1]), 0)


def test_export_round_trip_needs_no_pickle(tmp_path, cond_pkl):
    out = export_safetensors(cond_pkl, tmp_path / "export")
    meta = json.loads((out / "stylegan2.json").read_text())
    assert meta["format"] == "sio-stylegan2/1"
    assert meta["source"] == {
        "file": "network-snapshot.pkl",
        "sha256": sha256_file(cond_pkl),
        "network": "G_ema",
    }
    from_pkl = StyleGAN2Generator.from_pretrained(cond_pkl)
    exported = StyleGAN2Generator.from_pretrained(out)
    labels = torch.tensor([0, 1, 2, 0])
    assert torch.equal(from_pkl.sample(4, labels, 3), exported.sample(4, labels, 3))
    assert exported.checkpoint_sha256() == sha256_file(out / "stylegan2.safetensors")
    result = CliRunner().invoke(
        get_cli(), ["stylegan2-export", str(cond_pkl), str(tmp_path / "cli")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "stylegan2.safetensors").read_bytes() == (
        out / "stylegan2.safetensors"
    ).read_bytes()


def test_generate_shard_set_from_a_pickle(tmp_path, cond_pkl):
    generator = GeneratorConfig(
        name="stylegan2-ada", path=str(cond_pkl), stylegan2=StyleGAN2Settings(truncation_psi=0.8)
    )
    job = GenerateConfig(num_images=6, batch_size=2, shard_size=3, seed=4)
    manifest = generate_shard_set(cond_pkl, tmp_path / "syn", job, generator)
    assert verify_shard_set(tmp_path / "syn") == 6
    assert manifest["class_counts"] == [2, 2, 2] and manifest["image_size"] == [16, 16]
    provenance = manifest["provenance"]
    assert provenance["generator"] == "stylegan2-ada"
    assert provenance["checkpoint_sha256"] == sha256_file(cond_pkl) == weights_fingerprint(cond_pkl)
    assert provenance["settings"] == {
        "truncation_psi": 0.8,
        "noise_mode": "const",
        "resolution": 16,
    }
    first_image, label, meta = next(iter_samples(tmp_path / "syn"))
    model = load_generator(generator, cond_pkl.parent)  # the folder holding the one .pkl
    again = model.sample(1, torch.tensor([0]), meta["seed"])[0]
    assert label == 0 and np.array_equal(first_image, again.numpy())


def test_missing_and_mismatched_files(tmp_path, cond_pkl):
    with pytest.raises(FileNotFoundError, match="0 .pkl files and no export"):
        StyleGAN2Generator.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.pkl: not found"):
        StyleGAN2Generator.from_pretrained(tmp_path / "nothing.pkl")
    config = GeneratorConfig(name="stylegan2-ada", path="x")
    with pytest.raises(FileNotFoundError, match="no generator folder or file"):
        load_generator(config, tmp_path / "nothing.pkl")
    export = export_safetensors(cond_pkl, tmp_path / "export")
    (export / "stylegan2.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"stylegan2\.json: missing"):
        StyleGAN2Generator.from_pretrained(export)
    kwargs, _, state, *_ = load_case("cond16")
    del state["synthesis.b8.conv1.affine.bias"]
    state["mapping.fc1.weight"] = state["mapping.fc1.weight"][:, :5]
    bad = write_pickle(tmp_path / "bad.pkl", kwargs, state)
    with pytest.raises(ValueError, match=r"(?s)bad\.pkl: the weights do not fit.*b8\.conv1"):
        StyleGAN2Generator.from_pretrained(bad)


def test_settings_are_checked():
    settings = parse_dataclass(
        StyleGAN2Settings, {"truncation_psi": 0.5, "noise_mode": "none"}, "generator.stylegan2"
    )
    assert settings == StyleGAN2Settings(0.5, "none")
    with pytest.raises(ConfigError, match="truncation_psi: must be in"):
        parse_dataclass(StyleGAN2Settings, {"truncation_psi": 0}, "generator.stylegan2")
    with pytest.raises(ConfigError, match="noise_mode: expected one of"):
        parse_dataclass(StyleGAN2Settings, {"noise_mode": "loud"}, "generator.stylegan2")
