"""Preference pairs from verdicts: keep only those the judge is confident about."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairChoice:
    chosen_is_b: bool
    target: float
    """Soft label: the judge's probability that the chosen response is better (>= 0.5)."""


def choose(p_b: float, margin: float) -> PairChoice | None:
    """The pair implied by p(B better), or None when |p_b - 0.5| < margin (too close to call)."""
    if abs(p_b - 0.5) < margin:
        return None
    return PairChoice(chosen_is_b=p_b > 0.5, target=max(p_b, 1.0 - p_b))
