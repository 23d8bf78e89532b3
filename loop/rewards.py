"""Every reward kind registered, and the scorer a run's `rewards:` section asks for.

The kinds live where their imports are allowed (`checks` in `rewards`, `judge` in `critique`, `reward_model`
in `policies`); this module imports them all, so a caller never meets a kind that is configured but unknown.
"""

from __future__ import annotations

import critique.reward_judge  # noqa: F401  (registers "judge")
import policies.reward_scoring  # noqa: F401  (registers "reward_model"; torch loads only when one is built)
import rewards.checks  # noqa: F401  (registers "checks")
from rewards.base import RewardContext, RewardScorer, build_scorer
from rewards.settings import RewardSettings


def reward_scorer(settings: RewardSettings, context: RewardContext) -> RewardScorer:
    return build_scorer(settings, context)
