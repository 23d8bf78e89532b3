"""The critique stage: π_i critiques and revises its own answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from critique.revision import Draft, critique_and_revise
from loop.pipeline.stages.rows import count_control_tokens, pair_source, shard_samples, skip, skipped_under_grpo
from loop.store import Critique, Sample
from policies.serving import SamplingParams

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


def critique(ctx: IterationContext) -> None:
    """π_i critiques and revises its own answers, one sampled principle per round (skipped when nothing uses
    the revisions: contrastive pairs without SFT on revisions, or GRPO)."""
    if skipped_under_grpo(ctx):
        return
    if not pair_source(ctx).revisions and not ctx.config.train.sft_on_revisions:
        skip(ctx, f"pairs.source {ctx.config.pairs.source} does not use revisions")
        return
    samples = shard_samples(ctx)
    c = ctx.config.critique
    params = SamplingParams(c.max_new_tokens, c.temperature, c.top_p, seed=ctx.seed_for("critique"))
    by_category = ctx.config.pairs.principles_by_category
    drafts = [Draft(key=(ctx.iteration_index, s.id), prompt=s.prompt, response=s.response or "",
                    category=s.prompt_category if by_category else None) for s in samples]
    with ctx.reporter.task("critique + revise", 2 * c.rounds * len(drafts)) as advance:
        chains = critique_and_revise(ctx.engines.policy, ctx.sampler, drafts, rounds=c.rounds, params=params,
                                     progress=advance)
    with ctx.store.session() as session:
        count_control_tokens(ctx, session, ((s.id, step.revision) for s, chain in zip(samples, chains, strict=True)
                                            for step in chain))
        for sample, chain in zip(samples, chains, strict=True):
            for step in chain:
                session.add(Critique(sample_id=sample.id, round=step.round, principle_id=step.principle_id,
                                     critique=step.critique, revision=step.revision,
                                     constitution_hash=ctx.constitution_hash))
            session.get(Sample, sample.id).revision = chain[-1].revision
        ctx.complete(session)
