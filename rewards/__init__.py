"""Rewards: functions that score a response to a prompt (its category and principle), registered by kind and
combined with weights; and the refusal detectors that grade the constitution's "refuses" checks. Torch-free at
import."""

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

__all__ = [
    "REWARD_KINDS",
    "Component",
    "Reward",
    "RewardComponentSettings",
    "RewardContext",
    "RewardFunction",
    "RewardScorer",
    "RewardSettings",
    "Scored",
    "build_scorer",
    "combine",
    "register_reward_kind",
]
