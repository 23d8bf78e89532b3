"""The `checks` reward kind: the constitution's checks of an item's category (RBR-style propositions), one
component per check, 1.0 passed and 0.0 failed; "refuses" is graded by the configured refusal detector."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from constitution import Constitution
from rewards.base import Component, RewardContext, Scored, register_reward_kind
from rewards.refusal import REFUSAL_DETECTORS
from rewards.settings import RewardComponentSettings, RewardSettings


def _value(passed: bool | None) -> float | None:
    return None if passed is None else float(passed)


@dataclass(frozen=True)
class ChecksReward:
    constitution: Constitution
    detector: Callable[[str], bool]
    """Is this answer a refusal? (a `rewards.refusal` detector)"""
    kind: str = "checks"

    def score(self, items: Sequence[Scored], progress=None) -> list[list[Component]]:
        # Looked up on use, not at import: the checks are the constitution's (its schema validates them at load),
        # and the unit tests stand a contract-shaped module in for them.
        from constitution.checks import category_checks, run_checks

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
