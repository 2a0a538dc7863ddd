"""The ``evaluate`` section: each post-hoc detector's settings, the search, ``EvaluateConfig``."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from sio.core.config import bounded, short, short_text
from sio.core.config import check as _check


@dataclass(frozen=True)
class OdinSettings:
    """ODIN: softmax temperature and input-perturbation size (pixels in [0, 1])."""

    temperature: float = 1000.0
    epsilon: float = 0.0014

    def __post_init__(self):
        _check(self.temperature > 0, "temperature", "must be positive")
        _check(self.epsilon >= 0, "epsilon", "must be >= 0")


@dataclass(frozen=True)
class TempScaleSettings:
    """Temperature scaling: ``nll`` fits T to the NLL minimum (default); ``openood`` reproduces
    OpenOOD v1.5's T (50 L-BFGS iterations at lr 0.01 from T = 1.5, short of the minimum)."""

    fit: Literal["nll", "openood"] = "nll"


@dataclass(frozen=True)
class PercentileSettings:
    """ReAct's clipping and DICE's sparsification percentile, in (0, 100)."""

    percentile: float = 90.0

    def __post_init__(self):
        _check(0 < self.percentile < 100, "percentile", "must be in (0, 100)")


@dataclass(frozen=True)
class KnnSettings:
    """KNN: the k-th nearest ID train feature; backend auto = faiss if importable, else torch."""

    k: int = 50
    backend: Literal["auto", "faiss", "torch"] = "auto"

    def __post_init__(self):
        _check(self.k >= 1, "k", "must be >= 1")


@dataclass(frozen=True)
class VimSettings:
    """VIM: principal-space dimension; null = 256 when the feature width D >= 512, else D // 2."""

    dim: int | None = None

    def __post_init__(self):
        _check(self.dim is None or self.dim >= 1, "dim", "must be >= 1 or null")


@dataclass(frozen=True)
class OpenMaxSettings:
    """OpenMax: Weibull tail size per class and the number of top classes recalibrated."""

    tail_size: int = 20
    alpha_rank: int = 3

    def __post_init__(self):
        _check(self.tail_size >= 2, "tail_size", "must be >= 2")
        _check(self.alpha_rank >= 1, "alpha_rank", "must be >= 1")


@dataclass(frozen=True)
class AshSettings:
    """ASH-B: keep the top (100 - percentile)% of each feature vector, in [0, 100)."""

    percentile: float = 90.0

    def __post_init__(self):
        _check(0 <= self.percentile < 100, "percentile", "must be in [0, 100)")


@dataclass(frozen=True)
class ScaleSettings:
    """SCALE: the scale exp(sum h / sum of the top (100 - percentile)%), in [0, 100)."""

    percentile: float = 85.0

    def __post_init__(self):
        _check(0 <= self.percentile < 100, "percentile", "must be in [0, 100)")


@dataclass(frozen=True)
class GenSettings:
    """GEN: the generalized entropy's exponent gamma over the top m probabilities."""

    gamma: float = 0.1
    m: int = 100

    def __post_init__(self):
        _check(self.gamma > 0, "gamma", "must be positive")
        _check(self.m >= 1, "m", "must be >= 1")


@dataclass(frozen=True)
class SheSettings:
    """SHE: how h is compared with its predicted class's stored pattern."""

    metric: Literal["inner_product", "euclidean", "cosine"] = "inner_product"


@dataclass(frozen=True)
class NnguideSettings:
    """NNGuide: the k nearest of a bank holding the fraction alpha of ID train."""

    k: int = 100
    alpha: float = 0.01

    def __post_init__(self):
        _check(self.k >= 1, "k", "must be >= 1")
        _check(0 < self.alpha <= 1, "alpha", "must be in (0, 1]")


@dataclass(frozen=True)
class FdbdSettings:
    """fDBD: divide by the distance to the ID train mean (true) or by the feature norm."""

    distance_as_normalizer: bool = True


@dataclass(frozen=True)
class NciSettings:
    """NCI: the weight alpha of the feature L1 norm."""

    alpha: float = 0.0001

    def __post_init__(self):
        _check(self.alpha >= 0, "alpha", "must be >= 0")


@dataclass(frozen=True)
class VraSettings:
    """VRA: clip h to the percentile_low and percentile_high percentiles of ID val."""

    percentile_high: float = 90.0
    percentile_low: float = 10.0

    def __post_init__(self):
        _check(0 <= self.percentile_low <= 100, "percentile_low", "must be in [0, 100]")
        _check(
            self.percentile_low < self.percentile_high <= 100,
            "percentile_high",
            "must be in (percentile_low, 100]",
        )


@dataclass(frozen=True)
class RelationSettings:
    """Relation: the power of each relation-graph edge (OpenOOD's ``pow``)."""

    power: float = 1.0

    def __post_init__(self):
        _check(self.power > 0, "power", "must be positive")


@dataclass(frozen=True)
class ResidualSettings:
    """Residual: principal-space dimension; null = 512 when D > 512, else as VIM's rule."""

    dim: int | None = None

    def __post_init__(self):
        _check(self.dim is None or self.dim >= 1, "dim", "must be >= 1 or null")


@dataclass(frozen=True)
class SearchSettings:
    """Optional detector hyperparameter search (OpenOOD v1.5's APS), off by default: a seeded
    ``ood_val_fraction`` of each OOD set is held out as OOD val and left out of every test
    metric; ID val is the ID side. Grids: sio/evaluate/search.py."""

    enabled: bool = False
    ood_val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        _check(0 < self.ood_val_fraction <= 0.5, "ood_val_fraction", "must be in (0, 0.5]")


ALL_DETECTORS = (
    *("openmax", "msp", "tempscale", "odin", "ebo", "gradnorm"),
    *("react", "mls", "klm", "vim", "knn", "dice"),
)


@dataclass(frozen=True)
class EvaluateConfig:
    """Post-hoc detectors (names in sio.evaluate.DETECTORS; defaults as OpenOOD v1.5), metrics."""

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"methods": "detectors"}  # before issue 29

    detectors: tuple[str, ...] = ALL_DETECTORS
    # id: ID positive (the literature, SIO, OpenOOD v1.5 as tagged); ood: OOD positive
    # (OpenOOD's main branch since Aug 2023 and its current leaderboard)
    fpr_convention: Literal["id", "ood"] = "id"
    batch_size: int = bounded(1, 2**20, default=512)
    # a detector that cannot be fitted or gives a NaN or inf score: false records it under
    # results.json's ``skipped`` and scores the others; true stops with an error naming it
    strict: bool = False
    # Python modules imported when the config is read: the detectors they register
    # (@sio.evaluate.DETECTORS.register("name")) are then nameable in ``detectors``
    plugins: tuple[str, ...] = ()
    # off: sio's detectors, with their documented departures from OpenOOD v1.5 (float64,
    # no NaN, NNGuide's spread bank, Residual on ID train); openood: every detector computed
    # as OpenOOD v1.5's own code, quirks included (sio/evaluate/detectors/parity.py; it sets
    # tempscale's fit and OpenMax's settings to OpenOOD's)
    parity: Literal["off", "openood"] = "off"
    tempscale: TempScaleSettings = field(default_factory=TempScaleSettings)
    odin: OdinSettings = field(default_factory=OdinSettings)
    react: PercentileSettings = field(default_factory=PercentileSettings)
    dice: PercentileSettings = field(default_factory=PercentileSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)
    vim: VimSettings = field(default_factory=VimSettings)
    openmax: OpenMaxSettings = field(default_factory=OpenMaxSettings)
    # OpenOOD v1.5's other activation detectors (not in the default list)
    ash: AshSettings = field(default_factory=AshSettings)
    scale: ScaleSettings = field(default_factory=ScaleSettings)
    gen: GenSettings = field(default_factory=GenSettings)
    she: SheSettings = field(default_factory=SheSettings)
    nnguide: NnguideSettings = field(default_factory=NnguideSettings)
    fdbd: FdbdSettings = field(default_factory=FdbdSettings)
    nci: NciSettings = field(default_factory=NciSettings)
    vra: VraSettings = field(default_factory=VraSettings)
    relation: RelationSettings = field(default_factory=RelationSettings)
    residual: ResidualSettings = field(default_factory=ResidualSettings)
    search: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self):
        _check(len(self.detectors) >= 1, "detectors", "needs at least one detector")
        _check(len(set(self.detectors)) == len(self.detectors), "detectors", "must be distinct")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        for i, module in enumerate(self.plugins):
            try:
                importlib.import_module(module)
            except ImportError as err:
                why = short_text(str(err))
                _check(False, f"plugins[{i}]", f"cannot import {short(module)}: {why}")
