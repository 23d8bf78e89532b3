"""Win rates from two-order judge verdicts, with a Wilson interval and the judge's position consistency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when n is 0.

    `successes` may be fractional (ties count one half).
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At p = 0 or 1 the bound is exactly 0 or 1; floating point would leave it a rounding error away.
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


@dataclass(frozen=True)
class WinRate:
    n: int
    rate: float
    lower: float
    upper: float
    position_consistency: float
    """Share of comparisons where both orders name the same winner (a judge that follows a position: 0)."""


def win_rate(verdicts: Sequence[tuple[float, float]]) -> WinRate:
    """From (p(candidate better) shown second, p(candidate better) shown first) per comparison.

    A comparison is won when the two-order mean is above one half, lost below, a tie (one half) at exactly
    one half (identical answers).
    """
    n = len(verdicts)
    if n == 0:
        return WinRate(0, math.nan, 0.0, 1.0, math.nan)
    wins = sum(1.0 if (a + b) / 2 > 0.5 else 0.5 if (a + b) / 2 == 0.5 else 0.0 for a, b in verdicts)
    consistent = sum((a > 0.5) == (b > 0.5) and a != 0.5 for a, b in verdicts)
    lower, upper = wilson_interval(wins, n)
    return WinRate(n, wins / n, lower, upper, consistent / n)


def precision_recall(predicted: Sequence[bool], actual: Sequence[bool]) -> tuple[float, float]:
    """(precision, recall) of `predicted` against `actual` for the positive class; nan where undefined."""
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    positive, relevant = sum(predicted), sum(actual)
    return (tp / positive if positive else math.nan), (tp / relevant if relevant else math.nan)
