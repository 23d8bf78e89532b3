"""The judge stage: the AI judge labels each answer against its revision, and confirms contrasts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from critique.judge import Matchup, make_method
from loop.pipeline.stages.rows import contrasts, pair_source, principle_for, shard_samples
from loop.store import Comparison

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


def judge_revisions(ctx: IterationContext) -> None:
    """The judge compares each original answer (A) with its final revision (B) under a sampled principle, and
    (pairs.confirm) each negative contrastive answer (A) with the positive one (B) under its principle."""
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
    verdicts = []
    if jobs:
        with ctx.reporter.task(f"judge ({j.method})", 2 * len(jobs)) as advance:
            verdicts = method.judge(ctx.engines.judge, [m for _, _, m in jobs], advance)
    with ctx.store.session() as session:
        for (kind, sample_id, matchup), verdict in zip(jobs, verdicts, strict=True):
            session.add(Comparison(
                sample_id=sample_id, principle_id=matchup.principle.id, judge=ctx.engines.judge.name,
                p_b_when_second=verdict.p_b_when_second, p_b_when_first=verdict.p_b_when_first, p_b=verdict.p_b,
                constitution_hash=ctx.constitution_hash, kind=kind, method=j.method, abstained=verdict.abstained))
        ctx.complete(session)
