"""The `checks` reward kind: the constitution's checks of an item's category (RBR-style propositions), one
component per check, 1.0 passed and 0.0 failed; "refuses" is graded by the configured refusal detector."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from constitution import Constitution
from constitution.checks import category_checks, run_checks
from rewards.base import Component, RewardContext, Scored, register_reward_kind
from rewards.refusal import REFUSAL_DETECTORS
from rewards.settings import RewardComponentSettings, RewardSettings

if TYPE_CHECKING:
    from policies.serving import Progress


def _value(passed: bool | None) -> float | None:
    return None if passed is None else float(passed)


@dataclass(frozen=True)
class ChecksReward:
    constitution: Constitution
    detector: Callable[[str], bool]
    """Is this answer a refusal? (a `rewards.refusal` detector)"""
    kind: str = "checks"

    def score(self, items: Sequence[Scored], progress: Progress | None = None) -> list[list[Component]]:
        by_category = {c: category_checks(self.constitution, c) for c in {item.category for item in items}}
        scored = []
        for item in items:
            checks = by_category[item.category]
            results = [] if checks is None else run_checks(checks, item.response, self.detector(item.response))
            scored.append([Component(self.kind, r.name, _value(r.passed)) for r in results])
        if progress:
            progress(len(items))
        return scored


@register_reward_kind("checks")
def build_checks(component: RewardComponentSettings, settings: RewardSettings,
                 context: RewardContext) -> ChecksReward:
    return ChecksReward(context.constitution, REFUSAL_DETECTORS[settings.refusal_classifier])
