"""Warnings for authors: principles that say almost the same thing, and weights that starve a principle."""

from __future__ import annotations

from difflib import SequenceMatcher
from itertools import combinations
from typing import TYPE_CHECKING

from constitution.problems import Problem
from constitution.schema import Constitution, Principle

if TYPE_CHECKING:
    from constitution.loader import Origin

NEAR_DUPLICATE_RATIO = 0.85
"""Similarity (difflib ratio of the three request/question texts) from which two principles are reported."""
STARVED_SHARE = 0.1
"""A principle drawn less often than this fraction of an equal share is practically never sampled."""


def lint_constitution(constitution: Constitution, origins: dict[str, Origin]) -> list[Problem]:
    return _near_duplicates(constitution, origins) + _starved(constitution, origins)


def _wording(principle: Principle) -> str:
    return " ".join([principle.critique_request, principle.revision_request, principle.comparison_question]).lower()


def _near_duplicates(constitution: Constitution, origins: dict[str, Origin]) -> list[Problem]:
    problems = []
    for a, b in combinations(constitution.principles, 2):
        matcher = SequenceMatcher(None, _wording(a), _wording(b), autojunk=False)
        if matcher.quick_ratio() < NEAR_DUPLICATE_RATIO:
            continue
        ratio = matcher.ratio()
        if ratio >= NEAR_DUPLICATE_RATIO:
            first = origins[a.id]
            problems.append(origins[b.id].source.problem(
                (*origins[b.id].loc, "id"),
                f"principle {b.id!r} is worded almost like {a.id!r} ({first.source.path}:{first.line}), "
                f"{ratio:.0%} similar", "merge them, or make each one ask about something different",
                severity="warning"))
    return problems


def _starved(constitution: Constitution, origins: dict[str, Origin]) -> list[Problem]:
    total = sum(p.weight for p in constitution.principles)
    n = len(constitution.principles)
    problems = []
    for principle in constitution.principles:
        share = principle.weight / total
        if share < STARVED_SHARE / n:
            origin = origins[principle.id]
            problems.append(origin.source.problem(
                (*origin.loc, "weight"),
                f"weight {principle.weight:g} gives {principle.id!r} a {share:.2%} chance per draw "
                f"(about once in {round(1 / share)} draws): practically never sampled",
                f"an equal share here is {1 / n:.1%}; raise the weight or `remove` the principle",
                severity="warning"))
    return problems
