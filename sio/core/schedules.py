"""Learning-rate schedules as per-step factors of the base rate (for ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine(total_steps: int) -> Callable[[int], float]:
    """Per-step cosine from 1 to 0 over ``total_steps`` (SIO's and OpenOOD's schedule)."""
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up (step + 1) / warmup_steps, then the cosine from 1 to 0 over the rest."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = min(step - warmup_steps, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done / (total_steps - warmup_steps)))

    return factor
