"""Rewards: functions that score a response to a prompt (its category, principle and verifiable task),
registered by kind and combined with weights; and the refusal detectors that grade the constitution's "refuses"
checks. Importing the package registers the kinds that live in it (`checks`, `task`). Torch-free at import."""

import rewards.checks  # noqa: F401  (registers "checks")
import rewards.tasks  # noqa: F401  (registers "task")
from rewards.base import (
    REWARD_KINDS,
    Component,
    Reward,
    RewardContext,
    RewardFunction,
    RewardScorer,
    Scored,
    build_scorer,
    combine,
    register_reward_kind,
)
from rewards.settings import RewardComponentSettings, RewardSettings
from rewards.task_spec import Constraint, TaskSpec

__all__ = [
    "REWARD_KINDS",
    "Component",
    "Constraint",
    "Reward",
    "RewardComponentSettings",
    "RewardContext",
    "RewardFunction",
    "RewardScorer",
    "RewardSettings",
    "Scored",
    "TaskSpec",
    "build_scorer",
    "combine",
    "register_reward_kind",
]
