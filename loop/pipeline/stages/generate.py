"""The generate stage: π_i answers the iteration's prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from critique.contrastive import contrastive_answers, contrastive_conversations
from loop.pipeline.stages.rows import pair_source, principle_for, shard_samples
from loop.store import Contrast, Sample
from policies.serving import SamplingParams

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


def generate(ctx: IterationContext) -> None:
    """π_i answers every sample's prompt; for contrastive pairs also under a principle's positive and negative
    system prompt (with the same seed, so only the system prompt differs)."""
    samples = shard_samples(ctx)
    g = ctx.config.generation
    params = SamplingParams(g.max_new_tokens, g.temperature, g.top_p, seed=ctx.seed_for("generate"))
    contrastive = pair_source(ctx).contrasts
    principles = [principle_for(ctx, s, "contrast") for s in samples] if contrastive else []
    conversations = [[{"role": "user", "content": s.prompt}] for s in samples]
    for sample, principle in zip(samples if contrastive else [], principles, strict=True):
        conversations += contrastive_conversations(sample.prompt, principle)
    with ctx.reporter.task("generate responses", len(conversations)) as advance:
        responses = ctx.engines.policy.generate(conversations, params, advance)
    with ctx.store.session() as session:
        for sample, response in zip(samples, responses[:len(samples)], strict=True):
            session.get(Sample, sample.id).response = response
        contrasts = responses[len(samples):]
        for i, (sample, principle) in enumerate(zip(samples if contrastive else [], principles, strict=True)):
            positive, negative = contrastive_answers(principle, contrasts[2 * i], contrasts[2 * i + 1])
            session.add(Contrast(sample_id=sample.id, principle_id=principle.id, positive=positive,
                                 negative=negative, constitution_hash=ctx.constitution_hash))
        ctx.complete(session)
