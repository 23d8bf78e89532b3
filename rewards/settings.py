"""The reward a run trains on (`rewards:` in a run config): which kinds, their weights, and the refusal detector
that grades the constitution's "refuses" checks. Pydantic only, torch-free."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

RewardKind = Literal["checks", "task", "judge", "reward_model"]
KINDS: tuple[str, ...] = get_args(RewardKind)
"""The kinds a config may name (each registers itself in `rewards.base.REWARD_KINDS`)."""


class RewardComponentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RewardKind
    """checks: the constitution's checks of the item's category (1 passed, 0 failed). judge: the judge's p(yes)
    that the answer follows the item's principle. reward_model: a trained reward model's score, squashed into
    (0, 1). task: the item's verifiable task checked exactly (its answer and each format constraint, 1 met,
    0 not; nothing for an item without a task)."""
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """Its share of the combined reward, relative to the other components (0 keeps it stored but unused)."""


def _default_components() -> list[RewardComponentSettings]:
    return [RewardComponentSettings(kind="checks")]


class RewardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    components: list[RewardComponentSettings] = Field(default_factory=_default_components, min_length=1)
    refusal_classifier: Literal["lexical", "outcome"] = "outcome"
    """The detector that grades "refuses" checks in training (`rewards.refusal.REFUSAL_DETECTORS`). Keep it
    distinct from the one the evaluation reports first (`evaluation.refusal.classifier`, lexical or the judge by
    default): the evaluation reports both, so a policy that learns one detector's phrases shows in the other."""
