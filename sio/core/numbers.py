"""Numbers in results files rounded to what they mean: every float to 1e-6, and to at least six
significant digits (a p-value of 1.234567e-9 stays 1.23457e-09, not 0), so that float noise
(``39.800000000000004``) never reaches a JSON file. One helper for every results writer."""

from __future__ import annotations

import math

DECIMALS = 6
SIGNIFICANT = 6


def round_number(value: float) -> float:
    """``value`` to ``DECIMALS`` decimals, or to ``SIGNIFICANT`` digits where that is finer."""
    if value == 0 or not math.isfinite(value):
        return value
    digits = SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))
    return round(value, max(DECIMALS, digits))


def rounded(data):
    """``data`` (nested dicts, lists and tuples) with every float rounded (``round_number``);
    ints, bools, strings and None as they are."""
    if isinstance(data, float):
        return round_number(data)
    if isinstance(data, dict):
        return {key: rounded(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [rounded(value) for value in data]
    return data
