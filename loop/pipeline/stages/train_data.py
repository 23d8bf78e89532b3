"""What the train stage trains on besides this iteration's pairs: replayed pairs of earlier iterations, the
per-iteration pair budget, the warm start's checked samples, and GRPO's prompts. Pure store reads, so they can be
tested on a store without a model; the selections are deterministic, so a re-run of a killed stage picks the same
data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from critique.sampler import Candidate, pair_key, stratify
from loop.config.training import ReplaySettings
from loop.store import Iteration, Pair, RewardScore, Sample, SampledAnswer
from loop.store.queries import iteration_samples
from rewards.task_spec import TaskSpec


@dataclass(frozen=True)
class TrainPair:
    pair: Pair
    prompt: str
    replayed: bool = False

    @property
    def key(self) -> str:
        # Older rows may lack a key: the same identity is computed from the texts.
        return self.pair.key or pair_key(self.prompt, self.pair.chosen, self.pair.rejected)


def iteration_pairs(session: Session, iteration_id: int) -> list[TrainPair]:
    """An iteration's pairs with their prompts, in id order."""
    rows = session.execute(select(Pair, Sample.prompt).join(Sample, Pair.sample_id == Sample.id)
                           .where(Pair.iteration_id == iteration_id).order_by(Pair.id)).all()
    return [TrainPair(pair, prompt) for pair, prompt in rows]


def replay_pairs(session: Session, run_id: int, iteration_index: int, current: list[TrainPair],
                 settings: ReplaySettings) -> list[TrainPair]:
    """Up to `settings.max_pairs` pairs of the run's earlier iterations: most recent iteration first, each in id
    order, none whose key repeats one of `current` or an earlier pick. Iterations whose candidate was rejected
    count too: a pair's label does not depend on the policy trained on it."""
    if not settings.max_pairs:
        return []
    earlier = select(Iteration.id, Iteration.index).where(Iteration.run_id == run_id,
                                                          Iteration.index < iteration_index)
    iterations = session.execute(earlier.order_by(Iteration.index.desc())).all()
    if settings.from_iterations is not None:
        iterations = iterations[:settings.from_iterations]
    seen = {p.key for p in current}
    picked: list[TrainPair] = []
    for iteration_id, _ in iterations:
        for candidate in iteration_pairs(session, iteration_id):
            if len(picked) == settings.max_pairs:
                return picked
            if candidate.key not in seen:
                seen.add(candidate.key)
                picked.append(TrainPair(candidate.pair, candidate.prompt, replayed=True))
    return picked


def within_budget(pairs: list[TrainPair], limit: int | None) -> list[TrainPair]:
    """At most `limit` pairs: this iteration's first, then replays, each group taken round-robin across
    principles, most confident first (the sampler's stratification); the kept pairs keep their order."""
    if limit is None or len(pairs) <= limit:
        return pairs
    kept: set[int] = set()
    for group in ([p for p in pairs if not p.replayed], [p for p in pairs if p.replayed]):
        room = limit - len(kept)
        candidates = [Candidate(p.prompt, p.pair.chosen, p.pair.rejected, p.pair.target, p.pair.principle_id or "",
                                p.pair.source, ref=p.pair.id) for p in group]
        kept |= {c.ref for c in stratify(candidates, room)} if room > 0 else set()
    return [p for p in pairs if p.pair.id in kept]


def checked_answers(session: Session, iteration_id: int) -> list[tuple[str, str]]:
    """(prompt, answer) of the warm start: for each sample of the iteration, its highest-reward sampled answer
    (the lowest index among equals), kept only when every one of its "checks" components scored 1.0 and it has
    at least one (a check that could not score it does not vouch for it). In sample order."""
    answers = session.execute(
        select(SampledAnswer, Sample.prompt).join(Sample, SampledAnswer.sample_id == Sample.id)
        .where(Sample.iteration_id == iteration_id, SampledAnswer.reward.is_not(None))
        .order_by(Sample.id, SampledAnswer.reward.desc(), SampledAnswer.index)).all()
    best: dict[int, tuple[SampledAnswer, str]] = {}
    for answer, prompt in answers:
        best.setdefault(answer.sample_id, (answer, prompt))
    checks: dict[int, list[float | None]] = defaultdict(list)
    ids = [answer.id for answer, _ in best.values()]
    for answer_id, value in session.execute(select(RewardScore.answer_id, RewardScore.value).where(
            RewardScore.answer_id.in_(ids), RewardScore.kind == "checks")).all():
        checks[answer_id].append(value)
    return [(prompt, answer.text) for answer, prompt in best.values()
            if checks[answer.id] and all(v == 1.0 for v in checks[answer.id])]


def rollout_records(session: Session, iteration_id: int, tasks: Mapping[str, TaskSpec | None]) -> list[dict[str, Any]]:
    """GRPO's data (`policies.training.grpo_rewards.parse_example`): one record per sample of the iteration, in
    sample order, with its prompt as a user message, its category, the task of its prompt record (`tasks`, by prompt
    id: None when the pool holds none for it) and no principle."""
    return [{"prompt": [{"role": "user", "content": s.prompt}], "category": s.prompt_category,
             "task": task.model_dump(mode="json") if (task := tasks.get(s.prompt_id)) else None, "principle": None}
            for s in iteration_samples(session, iteration_id)]
