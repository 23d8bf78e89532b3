"""The generate stage: π_i answers the iteration's prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from critique import sampled
from critique.contrastive import contrastive_answers, contrastive_conversations
from loop.pipeline.stages.rows import (
    count_control_tokens,
    pair_source,
    principle_for,
    shard_samples,
    skipped_under_grpo,
)
from loop.store import Contrast, Sample, SampledAnswer
from policies.serving import SamplingParams

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext
    from loop.store import Sample as SampleRow


def generate(ctx: IterationContext) -> None:
    """π_i answers every sample's prompt; for contrastive pairs also under a principle's positive and negative
    system prompt (with the same seed, so only the system prompt differs); for sampled pairs K times, some
    answers under a principle's steering (`pairs.sampled`). Skipped under GRPO, which samples its own."""
    if skipped_under_grpo(ctx):
        return
    samples = shard_samples(ctx)
    g = ctx.config.generation
    params = SamplingParams(g.max_new_tokens, g.temperature, g.top_p, seed=ctx.seed_for("generate"))
    source = pair_source(ctx)
    contrastive = source.contrasts
    principles = [principle_for(ctx, s, "contrast") for s in samples] if contrastive else []
    draws = [_draws(ctx, s) for s in samples] if source.sampled else []
    conversations = [[{"role": "user", "content": s.prompt}] for s in samples] if not draws else []
    owners = [s.id for s in samples] if not draws else []  # the sample each conversation answers
    for sample, principle in zip(samples if contrastive else [], principles, strict=True):
        conversations += contrastive_conversations(sample.prompt, principle)
        owners += [sample.id] * (len(conversations) - len(owners))
    for sample, plan in zip(samples if draws else [], draws, strict=True):
        conversations += [sampled.conversation(sample.prompt, steering, p) for steering, p in plan]
        owners += [sample.id] * len(plan)
    with ctx.reporter.task("generate responses", len(conversations)) as advance:
        responses = ctx.engines.policy.generate(conversations, params, advance)
    with ctx.store.session() as session:
        count_control_tokens(ctx, session, zip(owners, responses, strict=True))
        if draws:
            _store_draws(ctx, session, samples, draws, responses)
            ctx.complete(session)
            return
        for sample, response in zip(samples, responses[:len(samples)], strict=True):
            session.get(Sample, sample.id).response = response
        contrasts = responses[len(samples):]
        for i, (sample, principle) in enumerate(zip(samples if contrastive else [], principles, strict=True)):
            positive, negative = contrastive_answers(principle, contrasts[2 * i], contrasts[2 * i + 1])
            session.add(Contrast(sample_id=sample.id, principle_id=principle.id, positive=positive,
                                 negative=negative, constitution_hash=ctx.constitution_hash))
        ctx.complete(session)


def _draws(ctx: IterationContext, sample: SampleRow) -> list[tuple[sampled.Steering, object]]:
    """(steering, principle) of each of a sample's K answers; a steered answer's principle is drawn among those
    that apply to the prompt's category and steer that way (reproducibly, from the sample and the answer)."""
    s = ctx.config.pairs.sampled
    category = sample.prompt_category if ctx.config.pairs.principles_by_category else None
    candidates = ctx.sampler.candidates(category)
    return [(steering, None if steering == "plain" else ctx.sampler.sample(
        (ctx.iteration_index, sample.id), "sampled", k, category=category,
        where=sampled.steers(steering, candidates)))
        for k, steering in enumerate(sampled.steering_plan(s.k, s.positive, s.negative))]


def _store_draws(ctx: IterationContext, session, samples, draws, responses: list[str]) -> None:
    """Each sample's K answers as sampled_answers rows; its first answer is also the sample's response."""
    at = 0
    for sample, plan in zip(samples, draws, strict=True):
        texts = [sampled.answer_text(steering, p, responses[at + k]) for k, (steering, p) in enumerate(plan)]
        at += len(plan)
        session.get(Sample, sample.id).response = texts[0]
        session.add_all(SampledAnswer(sample_id=sample.id, index=k, steering=steering,
                                      principle_id=p.id if p is not None else None, text=text)
                        for k, ((steering, p), text) in enumerate(zip(plan, texts, strict=True)))
