"""OpenOOD v1.5's own postprocessors as a peer of benchmarks/evaluate.py (``--openood DIR``).

OpenOOD is not on PyPI and is not vendored: DIR is a checkout (``git clone
https://github.com/Jingkang50/OpenOOD``). Only the postprocessor modules are loaded (the
package ``__init__``s, which import every method's dependencies, are skipped). They get the
same float32 features as sio through a stand-in network whose ``forward`` is the last layer
(``forward(h, return_feature=True)`` -> (h W^T + b, h), ``get_fc``, ``forward_threshold`` for
ReAct) and loaders of 200-row batches (OpenOOD's default batch size). OpenOOD calls ``.cuda()``
throughout; on a CPU-only machine those calls are made no-ops in this process. TempScale is
left out (it allocates its parameter on CUDA directly); OpenMax needs ``libmr`` importable.
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
}


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
        ("openood.postprocessors", package_root / "postprocessors"),
    ):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules.setdefault(name, module)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU-only: .cuda() is a no-op
    nn.Module.cuda = lambda self, *args, **kwargs: self
    head = root / ".git" / "HEAD"
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
    def __iter__(self):
        return _Batches(self)


def loader(features: np.ndarray, labels: np.ndarray | None = None) -> Loader:
    labels = np.full(len(features), -1) if labels is None else labels
    return Loader(
        {
            "data": torch.from_numpy(features[i : i + BATCH]),
            "label": torch.from_numpy(np.asarray(labels[i : i + BATCH], np.int64)),
        }
        for i in range(0, len(features), BATCH)
    )


class OpenOod:
    def __init__(self, bank, root: Path):
        self.commit = _load_postprocessors(Path(root))
        self.source = f"checkout {root} at {self.commit}"
        self.net = FeatureNet(bank.fc_weight, bank.fc_bias).eval()
        self.id_loaders = {
            split: loader(bank.id_features[split], bank.id_labels[split])
            for split in ("train", "val", "test")
        }
        self.ood_loaders = {
            group: {name: loader(f) for name, f in sets.items()} for group, sets in bank.ood.items()
        }

    def time(self, method: str, bank) -> dict | None:
        if method not in METHODS:
            return None
        module_name, class_name, args = METHODS[method]
        try:
            module = importlib.import_module(f"openood.postprocessors.{module_name}")
        except ImportError as err:
            print(f"OpenOOD {method}: cannot import ({err}); skipped", flush=True)
            return None
        config = _namespace(
            dataset=_namespace(name="cifar10"),
            postprocessor=_namespace(
                postprocessor_args=_namespace(**args),
                postprocessor_sweep=_namespace(**{f"{k}_list": [v] for k, v in args.items()}),
                APS_mode=False,
            ),
        )
        start = time.perf_counter()
        postprocessor = getattr(module, class_name)(config)
        postprocessor.setup(self.net, self.id_loaders, {"val": [], **self.ood_loaders})
        fitted = time.perf_counter()
        _, id_conf, _ = postprocessor.inference(self.net, self.id_loaders["test"], progress=False)
        ood = {
            group: {
                name: postprocessor.inference(self.net, batches, progress=False)[1]
                for name, batches in sets.items()
            }
            for group, sets in self.ood_loaders.items()
        }
        scored = time.perf_counter()
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
        return {"fit_s": fitted - start, "score_s": scored - fitted, "auroc": auroc}
