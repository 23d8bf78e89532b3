"""A sample's sampled answers (`pairs.source: sampled`) with their reward components, and why it made no pair."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from critique.pairs import PairRules, sampled_pair
from loop.store import RewardScore, Sample, SampledAnswer


def _answers(session: Session, sample_id: int) -> list[SampledAnswer]:
    return list(session.scalars(select(SampledAnswer).where(SampledAnswer.sample_id == sample_id)
                                .order_by(SampledAnswer.index)))


def sampled_answers(session: Session, sample_id: int) -> list[dict[str, Any]]:
    """Each answer with its steering, reward and every component that made the reward."""
    answers = _answers(session, sample_id)
    components: dict[int, list[RewardScore]] = defaultdict(list)
    for score in session.scalars(select(RewardScore).where(RewardScore.answer_id.in_([a.id for a in answers]))
                                 .order_by(RewardScore.id)):
        components[score.answer_id].append(score)
    return [{"index": a.index, "steering": a.steering, "principle": a.principle_id, "text": a.text,
             "reward": a.reward, "components": [{"kind": c.kind, "name": c.name, "value": c.value,
                                                 "weight": c.weight} for c in components[a.id]]}
            for a in answers]


def sampled_drop_reason(session: Session, sample_id: int, rules: PairRules) -> str:
    """Why a sample with sampled answers became no pair, by the pairs stage's own rule (`sampled_pair`)."""
    reason = sampled_pair(session.get(Sample, sample_id), _answers(session, sample_id), rules)
    if reason == "no-spread":
        return f"no-spread: the best and worst answers' rewards differ by less than {rules.reward_margin:g}"
    if reason == "unscored":
        return "unscored: fewer than two answers have a reward"
    return "dropped by de-duplication, length-bias control or the pair limit (see the iteration's drop counts)"
