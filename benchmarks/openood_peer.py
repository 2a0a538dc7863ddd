"""OpenOOD v1.5's own postprocessors as a peer of benchmarks/evaluate.py (``--openood DIR``) and
of benchmarks/parity.py (run as a script in the peers' environment, see ``main``).

OpenOOD is not on PyPI and is not vendored: DIR is a checkout (``git clone
https://github.com/Jingkang50/OpenOOD``, or ``git archive`` of a mirror). Only the postprocessor
modules (and ``networks/ash_net.py``, ``scale_net.py``) are loaded (the package ``__init__``s,
which import every method's dependencies, are skipped). They get the same float32 features as
sio through a stand-in network whose ``forward`` is the last layer (``forward(h,
return_feature=True)`` -> (h W^T + b, h), ``fc``, ``get_fc``, ``get_fc_layer``,
``forward_threshold`` for ReAct; OpenOOD's own ``ASHNet`` and ``ScaleNet`` wrap it for ASH and
SCALE, as its Evaluator does) and loaders of ``batch``-row batches (OpenOOD's Evaluator: 200;
parity.py: 256, the train batch NNGuide's bank is made of). OpenOOD calls ``.cuda()``
throughout; on a CPU-only machine those calls are made no-ops in this process, and TempScale's
``torch.ones(1, device='cuda')`` is made on the CPU. OpenMax needs ``libmr`` importable (in the
peers' environment: built from its sdist, see BENCHMARKS.md). The class count is registered in
OpenOOD's ``info.num_classes_dict`` under the key ``sio``.

As a script (``python openood_peer.py --openood DIR --bank BANK.npz --detectors a,b
--settings JSON --out SCORES.npz``, in the peers' environment): every detector's scores
(OpenOOD's conf, higher = ID) of ID test and of every OOD set, keyed as sio's ``scores.npz``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

BATCH = 200
METHODS = {  # sio name -> (module, class, postprocessor_args) as OpenOOD's configs/*.yml
    "msp": ("base_postprocessor", "BasePostprocessor", {}),
    "mls": ("maxlogit_postprocessor", "MaxLogitPostprocessor", {}),
    "ebo": ("ebo_postprocessor", "EBOPostprocessor", {"temperature": 1}),
    "klm": ("kl_matching_postprocessor", "KLMatchingPostprocessor", {}),
    "gradnorm": ("gradnorm_postprocessor", "GradNormPostprocessor", {}),
    "react": ("react_postprocessor", "ReactPostprocessor", {"percentile": 90}),
    "vim": ("vim_postprocessor", "VIMPostprocessor", {"dim": 256}),
    "knn": ("knn_postprocessor", "KNNPostprocessor", {"K": 50}),
    "dice": ("dice_postprocessor", "DICEPostprocessor", {"p": 90}),
    "openmax": ("openmax_postprocessor", "OpenMax", {}),
    "tempscale": ("temp_scaling_postprocessor", "TemperatureScalingPostprocessor", {}),
    # OpenOOD v1.5's other activation detectors (configs/postprocessors/<key>.yml)
    "ash": ("ash_postprocessor", "ASHPostprocessor", {"percentile": 90}),
    "scale": ("scale_postprocessor", "ScalePostprocessor", {"percentile": 85}),
    "gen": ("gen_postprocessor", "GENPostprocessor", {"gamma": 0.1, "M": 100}),
    "mds": ("mds_postprocessor", "MDSPostprocessor", {}),
    "rmds": ("rmds_postprocessor", "RMDSPostprocessor", {}),
    "she": ("she_postprocessor", "SHEPostprocessor", {"metric": "inner_product"}),
    "nnguide": ("nnguide_postprocessor", "NNGuidePostprocessor", {"K": 100, "alpha": 0.01}),
    "fdbd": ("fdbd_postprocessor", "fDBDPostprocessor", {"distance_as_normalizer": True}),
    "nci": ("nci_postprocessor", "NCIPostprocessor", {"alpha": 0.0001}),
    "vra": (
        "vra_postprocessor",
        "VRAPostprocessor",
        {"percentile_high": 90, "percentile_low": 10},
    ),
    "relation": ("relation_postprocessor", "RelationPostprocessor", {"pow": 1}),
    "residual": ("residual_postprocessor", "ResidualPostprocessor", {"dim": 512}),
}
# OpenOOD's Evaluator wraps the net for these (evaluation_api/evaluator.py)
WRAPPERS = {"ash": ("ash_net", "ASHNet"), "scale": ("scale_net", "ScaleNet")}


def _namespace(**values):
    return types.SimpleNamespace(**values)


def _load_postprocessors(root: Path) -> str:
    """Register ``openood``, ``openood.utils`` and ``openood.postprocessors`` as bare packages
    (no ``__init__`` run) so that single postprocessor modules import; returns the commit."""
    package_root = root / "openood"
    if not (package_root / "postprocessors" / "base_postprocessor.py").is_file():
        raise SystemExit(
            f"--openood {root}: no openood/postprocessors/ in it (an OpenOOD checkout?)"
        )
    for name, folder in (
        ("openood", package_root),
        ("openood.utils", package_root / "utils"),
        ("openood.networks", package_root / "networks"),
        ("openood.postprocessors", package_root / "postprocessors"),
    ):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules.setdefault(name, module)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU-only: .cuda() is a no-op
    nn.Module.cuda = lambda self, *args, **kwargs: self
    if not torch.cuda.is_available():  # TempScale's torch.ones(1, device='cuda')
        ones = torch.ones

        def cpu_ones(*args, device=None, **kwargs):
            return ones(*args, **kwargs)

        torch.ones = cpu_ones
    head = root / ".git" / "HEAD"
    if (root / ".commit").is_file():  # a `git archive` of a mirror, its commit written beside
        return (root / ".commit").read_text().strip()
    if head.is_file():
        ref = head.read_text().strip()
        if ref.startswith("ref: ") and (root / ".git" / ref[5:]).is_file():
            return (root / ".git" / ref[5:]).read_text().strip()
        return ref
    return "unknown"


class FeatureNet(nn.Module):
    """The stand-in network: its input is the penultimate features h."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        self.fc.weight.data = torch.from_numpy(weight).clone()
        self.fc.bias.data = torch.from_numpy(bias).clone()

    def forward(self, x, return_feature=False):
        # a fresh feature tensor, as a real network's: ASH-B and Relation's normalize write
        # into the features they get, which would otherwise be the loader's (the bank's) rows
        x = x.clone()
        logits = self.fc(x)
        return (logits, x) if return_feature else logits

    def forward_threshold(self, x, threshold):
        return self.fc(x.clip(max=threshold))

    def get_fc(self):
        return (
            self.fc.weight.detach().cpu().numpy(),
            self.fc.bias.detach().cpu().numpy(),
        )

    def get_fc_layer(self):
        return self.fc


class _Batches:
    """An iterator that also has a length, as a DataLoader's (OpenMax calls len(iter(...)))."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.batches):
            raise StopIteration
        self.position += 1
        return self.batches[self.position - 1]


class Loader(list):
    """A list of batches iterated as a DataLoader, with the ``batch_size`` and ``dataset``
    (only its length is used) that NNGuide reads."""

    def __init__(self, batches, batch_size: int, rows: int):
        super().__init__(batches)
        self.batch_size, self.dataset = batch_size, range(rows)

    def __iter__(self):
        return _Batches(self)


def loader(features: np.ndarray, labels: np.ndarray | None = None, batch: int = BATCH) -> Loader:
    labels = np.full(len(features), -1) if labels is None else labels
    return Loader(
        (
            {
                "data": torch.from_numpy(features[i : i + batch]),
                "label": torch.from_numpy(np.asarray(labels[i : i + batch], np.int64)),
            }
            for i in range(0, len(features), batch)
        ),
        batch,
        len(features),
    )


class OpenOod:
    def __init__(self, bank, root: Path, batch: int = BATCH):
        self.commit = _load_postprocessors(Path(root))
        self.source = f"checkout {root} at {self.commit}"
        importlib.import_module("openood.postprocessors.info").num_classes_dict["sio"] = len(
            bank.fc_bias
        )
        self.net = FeatureNet(bank.fc_weight, bank.fc_bias).eval()
        self.id_loaders = {
            split: loader(bank.id_features[split], bank.id_labels[split], batch)
            for split in ("train", "val", "test")
        }
        self.ood_loaders = {
            group: {name: loader(f, batch=batch) for name, f in sets.items()}
            for group, sets in bank.ood.items()
        }

    def network(self, method: str) -> nn.Module:
        """The stand-in network, wrapped as OpenOOD's Evaluator wraps it for ``method``."""
        if method not in WRAPPERS:
            return self.net
        module_name, class_name = WRAPPERS[method]
        module = importlib.import_module(f"openood.networks.{module_name}")
        return getattr(module, class_name)(self.net).eval()

    def scores(self, method: str, settings: dict | None = None) -> dict | None:
        """{"fit_s", "score_s", "id": ID test conf, "ood": {group: {name: conf}}} of OpenOOD's
        ``method`` with its config's args updated by ``settings`` (OpenOOD's names); None
        when OpenOOD has no such postprocessor or it cannot be imported here."""
        if method not in METHODS:
            return None
        module_name, class_name, args = METHODS[method]
        args = {**args, **(settings or {})}
        try:
            module = importlib.import_module(f"openood.postprocessors.{module_name}")
        except ImportError as err:
            print(f"OpenOOD {method}: cannot import ({err}); skipped", flush=True)
            return None
        config = _namespace(
            dataset=_namespace(name="sio"),
            postprocessor=_namespace(
                postprocessor_args=_namespace(**args),
                postprocessor_sweep=_namespace(**{f"{k}_list": [v] for k, v in args.items()}),
                APS_mode=False,
            ),
        )
        net = self.network(method)
        start = time.perf_counter()
        postprocessor = getattr(module, class_name)(config)
        postprocessor.setup(net, self.id_loaders, {"val": [], **self.ood_loaders})
        fitted = time.perf_counter()
        _, id_conf, _ = postprocessor.inference(net, self.id_loaders["test"], progress=False)
        ood = {
            group: {
                name: postprocessor.inference(net, batches, progress=False)[1]
                for name, batches in sets.items()
            }
            for group, sets in self.ood_loaders.items()
        }
        scored = time.perf_counter()
        return {"fit_s": fitted - start, "score_s": scored - fitted, "id": id_conf, "ood": ood}

    def time(self, method: str, bank) -> dict | None:
        run = self.scores(method)
        if run is None:
            return None
        id_conf, ood = run["id"], run["ood"]
        auroc = {}
        for group, sets in ood.items():
            values = [
                100
                * roc_auc_score(
                    np.r_[np.ones(len(id_conf)), np.zeros(len(conf))], np.r_[id_conf, conf]
                )
                for conf in sets.values()
            ]
            auroc[group] = float(np.mean(values))
        return {"fit_s": run["fit_s"], "score_s": run["score_s"], "auroc": auroc}


def main() -> None:
    """The script side of benchmarks/parity.py: OpenOOD's scores of every method, to --out."""
    import argparse
    import json

    from sio.evaluate.activations import load_activations

    parser = argparse.ArgumentParser(description="OpenOOD v1.5's scores on an activations file")
    parser.add_argument("--openood", required=True, help="an OpenOOD v1.5 checkout")
    parser.add_argument("--bank", required=True, help="an activations .npz (sio's format)")
    parser.add_argument("--detectors", required=True, help="comma-separated sio names")
    parser.add_argument("--settings", default="{}", help="JSON {method: {OpenOOD arg: value}}")
    parser.add_argument("--batch", type=int, default=256, help="rows per loader batch")
    parser.add_argument("--out", required=True, help="the scores .npz to write")
    args = parser.parse_args()
    bank = load_activations(args.bank)
    peer = OpenOod(bank, Path(args.openood), batch=args.batch)
    settings = json.loads(args.settings)
    arrays, seconds = {}, {}
    for method in args.detectors.split(","):
        run = peer.scores(method, settings.get(method))
        if run is None:
            continue
        arrays[f"{method}/id.test"] = np.asarray(run["id"], np.float64)
        for group, sets in run["ood"].items():
            for name, conf in sets.items():
                arrays[f"{method}/ood.{group}.{name}"] = np.asarray(conf, np.float64)
        seconds[method] = run["fit_s"] + run["score_s"]
        print(f"openood {method}: {seconds[method]:.1f} s", file=sys.stderr, flush=True)
    arrays["commit"] = np.array(peer.commit)
    arrays["seconds"] = np.array(json.dumps(seconds))
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
