"""What a pipeline's sweep expands into: one pure function, no I/O.

A *point* is one +SIO training configuration (generator, synthetic count, alpha); each runs
once per seed, beside the baseline (alpha = 1, no generator) per seed. ``grid: false`` takes the
base point (first generator, ``generate.num_images``, ``sio_alpha``) and varies one axis at a
time — the paper's Figures 3 to 6; ``grid: true`` takes every combination. Stages are shared:
each generator is trained once per distinct training definition and sampled once, at the
largest count any point asks of it; smaller counts are prefixes of that set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from sio.pipeline.config import PipelineConfig


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
