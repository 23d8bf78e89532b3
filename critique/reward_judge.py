"""The `judge` reward kind: the judge's p(yes) that an answer follows its item's principle, asked of each answer
alone (the pointwise judge's question). It lives here, above `rewards`, because it asks the judge's own
fenced prompt; importing this module registers it in `rewards.REWARD_KINDS`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from critique.judge import YES_NO, label_probability
from critique.prompts import pointwise_conversation
from policies.serving import Generator, Progress
from rewards.base import Component, RewardContext, Scored, missing_model, register_reward_kind
from rewards.settings import RewardComponentSettings, RewardSettings


@dataclass(frozen=True)
class JudgeReward:
    """One component per item, named by its principle: p(yes) among Yes/No, or None for an item without a
    principle or when the judge abstains (neither label a likely next token, or a non-finite log-prob)."""

    judge: Generator
    min_label_prob: float = 1e-4
    kind: str = "judge"

    def score(self, items: Sequence[Scored], progress: Progress | None = None) -> list[list[Component]]:
        asked = [i for i, item in enumerate(items) if item.principle is not None]
        conversations = [pointwise_conversation(items[i].prompt, items[i].response, items[i].principle)
                         for i in asked]
        # Scored as (No, Yes): label_probability gives p(Yes), the second choice.
        logps = self.judge.choice_logprobs(conversations, YES_NO[::-1], progress) if conversations else []
        p_yes = dict(zip(asked, (label_probability(s, self.min_label_prob) for s in logps), strict=True))
        return [[Component(self.kind, item.principle.id if item.principle else "", p_yes.get(i))]
                for i, item in enumerate(items)]


@register_reward_kind("judge")
def build_judge_reward(component: RewardComponentSettings, settings: RewardSettings,
                       context: RewardContext) -> JudgeReward:
    if context.judge is None:
        raise missing_model("judge", "a judge model (a Generator)")
    return JudgeReward(context.judge)
