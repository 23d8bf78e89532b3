"""The judge stage: the AI judge labels each answer against its revision, and confirms contrasts; for sampled
pairs the rewards score every sampled answer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from critique.consistency import checked
from critique.judge import Matchup, make_method
from loop.pipeline.stages.rows import contrasts, pair_source, principle_for, shard_samples, skipped_under_grpo
from loop.store import Comparison, RewardScore, SampledAnswer

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


def judge_revisions(ctx: IterationContext) -> None:
    """The judge compares each original answer (A) with its final revision (B) under a sampled principle, and
    (pairs.confirm) each negative contrastive answer (A) with the positive one (B) under its principle. Skipped
    under GRPO, whose trainer scores its rollouts itself."""
    if skipped_under_grpo(ctx):
        return
    j, source = ctx.config.judge, pair_source(ctx)
    jobs: list[tuple[str, int, Matchup]] = []
    samples = shard_samples(ctx)
    if source.revisions:
        for s in samples:
            jobs.append(("revision", s.id, Matchup(s.prompt, s.response or "", s.revision or "",
                                                   principle_for(ctx, s, "judge"))))
    if source.contrasts and ctx.config.pairs.confirm:
        shard = {s.id for s in samples}
        for contrast, s in contrasts(ctx):
            if s.id not in shard:
                continue
            jobs.append(("contrastive", s.id, Matchup(s.prompt, contrast.negative, contrast.positive,
                                                      ctx.constitution.get(contrast.principle_id))))
    method = make_method(j.method, ctx.constitution, ensemble_k=j.ensemble_k, samples=j.samples,
                         min_label_prob=j.min_label_prob, seed=ctx.seed_for("judge"))
    # The consistency check's flag acts only where the judge's label makes the pair (a judged source's revision
    # verdicts); a veto or a confirmation is not worth its extra judgments.
    labelling = checked(method, j.consistency_units if source.judged else 0, margin=j.margin)
    verdicts = []
    if jobs:
        with ctx.reporter.task(f"judge ({j.method})", 2 * len(jobs)) as advance:
            for kind, judge_with in (("revision", labelling), ("contrastive", method)):
                matchups = [m for k, _, m in jobs if k == kind]
                verdicts += judge_with.judge(ctx.engines.judge, matchups, advance) if matchups else []
    rewards = _score_answers(ctx, samples) if source.sampled else []
    with ctx.store.session() as session:
        for answer_id, reward in rewards:
            session.get(SampledAnswer, answer_id).reward = reward.total
            session.add_all(RewardScore(answer_id=answer_id, kind=c.kind, name=c.name, value=c.value,
                                        weight=c.weight) for c in reward.components)
        for (kind, sample_id, matchup), verdict in zip(jobs, verdicts, strict=True):
            session.add(Comparison(
                sample_id=sample_id, principle_id=matchup.principle.id, judge=ctx.engines.judge.name,
                p_b_when_second=verdict.p_b_when_second, p_b_when_first=verdict.p_b_when_first, p_b=verdict.p_b,
                constitution_hash=ctx.constitution_hash, kind=kind, method=j.method, abstained=verdict.abstained,
                suspect=verdict.suspect))
        ctx.complete(session)


def _score_answers(ctx: IterationContext, samples) -> list[tuple[int, object]]:
    """(answer id, reward) of every sampled answer of these samples: all K answers of a sample are scored under
    the one principle drawn for it, so their rewards compare."""
    from loop.rewards import reward_scorer
    from rewards.base import RewardContext, Scored

    by_id = {s.id: s for s in samples}
    with ctx.store.session() as session:
        answers = list(session.scalars(select(SampledAnswer).where(SampledAnswer.sample_id.in_(by_id))
                                       .order_by(SampledAnswer.id)))
    principles = {s.id: principle_for(ctx, s, "reward") for s in samples}
    items = [Scored(by_id[a.sample_id].prompt, a.text, by_id[a.sample_id].prompt_category, principles[a.sample_id])
             for a in answers]
    kinds = {c.kind for c in ctx.config.rewards.components}  # load models only for the kinds that ask them
    scored_by_model = "reward_model" in kinds
    scorer = reward_scorer(ctx.config.rewards, RewardContext(
        ctx.constitution, judge=ctx.engines.judge if "judge" in kinds else None,
        reward_model_dir=latest_reward_model(ctx.run_dir) if scored_by_model else None,
        base_model_dir=ctx.engines.model_dir if scored_by_model else None, dtype=ctx.config.model.dtype,
        device=ctx.config.model.device))
    with ctx.reporter.task("score sampled answers", len(items)) as advance:
        rewards = scorer.score(items, advance)
    return [(a.id, r) for a, r in zip(answers, rewards, strict=True)]


def latest_reward_model(run_dir: Path) -> Path | None:
    """The newest reward model the run trained (`train.trainer: ppo` writes one per iteration), or None."""
    from policies.training.heads import HEAD_FILE

    found = [d for d in (run_dir / "training").glob("iteration-*/reward_model/adapter") if (d / HEAD_FILE).is_file()]
    return max(found, key=lambda d: int(d.parent.parent.name.split("-")[1]), default=None)
