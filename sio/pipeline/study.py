"""What a pipeline's sweep expands into: one pure function, no I/O.

A *point* is one +SIO training configuration (generator, synthetic count, alpha); each runs
once per seed, beside the baseline (alpha = 1, no generator) per seed. ``grid: false`` takes the
base point (first generator, ``generate.num_images``, ``sio_alpha``) and varies one axis at a
time — the paper's Figures 3 to 6; ``grid: true`` takes every combination. Stages are shared:
each generator is trained once per distinct training definition and sampled once, at the
largest count any point asks of it; smaller counts are prefixes of that set.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from sio.pipeline.config import PipelineConfig

STUDY_FILE = "study.json"


@dataclass(frozen=True, order=True)
class Point:
    generator: str  # a generator's key (its label, else its kind)
    num_synthetic: int
    alpha: float

    @property
    def name(self) -> str:
        return f"{self.generator}-n{self.num_synthetic}-alpha{self.alpha:g}"


@dataclass(frozen=True)
class Study:
    points: tuple[Point, ...]  # the +SIO points (alpha < 1), base point first
    seeds: tuple[int, ...]

    def counts(self, generator: str) -> list[int]:
        """The synthetic counts the points use from ``generator``, ascending."""
        return sorted({p.num_synthetic for p in self.points if p.generator == generator})

    @property
    def generators(self) -> list[str]:
        """The generators some point uses, in first-use order."""
        return list(dict.fromkeys(p.generator for p in self.points))


def _axis(base, extra) -> list:
    """``base`` first, then the sweep's other values in their order, each once."""
    return list(dict.fromkeys((base, *extra)))


def expand_study(config: PipelineConfig) -> Study:
    """The points of ``config``'s sweep; alpha 1 is the baseline, never a +SIO point."""
    sweep = config.sweep
    generators = [g.key for g in config.generators]
    counts = _axis(config.generate.num_images, sweep.num_synthetic)
    alphas = _axis(config.sio_alpha, sweep.alphas)
    if sweep.grid:
        combos = itertools.product(generators, counts, alphas)
    else:
        base = (generators[0], counts[0], alphas[0])
        combos = [
            base,
            *((g, base[1], base[2]) for g in generators[1:]),
            *((base[0], n, base[2]) for n in counts[1:]),
            *((base[0], base[1], a) for a in alphas[1:]),
        ]
    points = [Point(g, n, float(a)) for g, n, a in combos if a < 1.0]
    return Study(points=tuple(dict.fromkeys(points)), seeds=config.seeds)


# The study record (``study.json``): written by ``sio run`` (run.py), read by the report
# (study_report.py). Its axes are Point's fields, defined once, above.
AXIS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Point))
BASELINE_GENERATOR = None  # a baseline run's generator: it trains on real images only


@dataclass(frozen=True)
class StudyRun:
    """One evaluated classifier: its point (``generator`` None for the alpha = 1 baseline),
    seed, run name and evaluation folder (relative to the output folder)."""

    name: str
    generator: str | None
    num_synthetic: int
    alpha: float
    seed: int
    evaluate: str

    @property
    def axes(self) -> tuple:
        return tuple(getattr(self, k) for k in AXIS)

    @property
    def is_baseline(self) -> bool:
        return self.generator is BASELINE_GENERATOR


@dataclass(frozen=True)
class GeneratorFigures:
    """A generator's synthetic set (relative folder, size) and its quality figures."""

    synthetic: str
    num_images: int
    label_agreement: float | None  # share of images a real-trained classifier labels as asked
    quality: dict  # {"metric": "fid" | "fd_classifier", "value": ..., ...}
    # the per-class audit (sio.generate audit.py), class name -> figure; None before it existed
    label_agreement_per_class: dict[str, float | None] | None = None
    confidence_per_class: dict[str, float | None] | None = None  # mean softmax of its label
    fd_classifier_per_class: dict[str, float | None] | None = None  # vs the class's real images

    @property
    def worst_class(self) -> tuple[str, float] | None:
        """(class, agreement) of the class the classifier recognises least, or None."""
        judged = [
            (k, v) for k, v in (self.label_agreement_per_class or {}).items() if v is not None
        ]
        return min(judged, key=lambda item: item[1]) if judged else None


@dataclass(frozen=True)
class StudyRecord:
    """What ``sio run`` ran: the base point, every generator's figures, every evaluated run."""

    base: Point
    generators: dict[str, GeneratorFigures]
    runs: tuple[StudyRun, ...]

    def to_json(self) -> dict:
        return {
            "base": dataclasses.asdict(self.base),
            "generators": {k: dataclasses.asdict(v) for k, v in self.generators.items()},
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = STUDY_FILE) -> StudyRecord:
        """The record from ``to_json``'s data; a missing or unknown field names ``source``."""
        try:
            return cls(
                base=Point(**data["base"]),
                generators={
                    k: GeneratorFigures(**v) for k, v in data.get("generators", {}).items()
                },
                runs=tuple(StudyRun(**r) for r in data["runs"]),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: not a study record written by `sio run` ({err})") from None

    def write(self, path: Path) -> None:
        from sio.core.files import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> StudyRecord:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; `sio run` writes it beside report.md")
        return cls.from_json(json.loads(path.read_text()), str(path))

    def base_runs(self) -> list[StudyRun]:
        """The baselines and the runs at the base point: the baseline-vs-+SIO table's."""
        base = tuple(getattr(self.base, k) for k in AXIS)
        return [r for r in self.runs if r.is_baseline or r.axes == base]
