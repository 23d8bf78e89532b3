"""The stages of one iteration. Each reads its inputs from the store, does its work with no transaction
open, then writes its outputs and its completion record in one transaction: a finished stage is never
redone, and an interrupted one leaves nothing behind."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from sqlalchemy import select

from critique.contrastive import contrastive_answers, contrastive_conversations
from critique.judge import Matchup, make_method
from critique.revision import Draft, critique_and_revise
from critique.sampler import Candidate, clamp, sample_pairs
from critique.sampler import annealed_margin as anneal
from loop.pipeline.context import IterationContext
from loop.pipeline.evaluate_stage import evaluate
from loop.pipeline.train_stage import train
from loop.store import Comparison, Contrast, Critique, Metric, Pair, Sample
from policies.serving import SamplingParams

log = logging.getLogger(__name__)

CONTRASTIVE_SOURCES = ("contrastive", "mixed")
REVISION_SOURCES = ("judged", "revision", "mixed")


def _samples(ctx: IterationContext) -> list[Sample]:
    """The samples of this context's shard (all of them unless the daemon split the stage)."""
    with ctx.store.session() as session:
        return ctx.mine(list(session.scalars(
            select(Sample).where(Sample.iteration_id == ctx.iteration_id).order_by(Sample.id))))


def _principle(ctx: IterationContext, sample: Sample, step: str):
    """The principle drawn for one step of a sample: among those that apply to its prompt's category when the
    config says so."""
    category = sample.prompt_category if ctx.config.pairs.principles_by_category else None
    return ctx.sampler.sample((ctx.iteration_index, sample.id), step, category=category)


def generate(ctx: IterationContext) -> None:
    """π_i answers every sample's prompt; for contrastive pairs also under a principle's positive and negative
    system prompt (with the same seed, so only the system prompt differs)."""
    samples = _samples(ctx)
    g = ctx.config.generation
    params = SamplingParams(g.max_new_tokens, g.temperature, g.top_p, seed=ctx.seed_for("generate"))
    contrastive = ctx.config.pairs.source in CONTRASTIVE_SOURCES
    principles = [_principle(ctx, s, "contrast") for s in samples] if contrastive else []
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
        ctx.complete(session, "generate")


def critique(ctx: IterationContext) -> None:
    """π_i critiques and revises its own answers, one sampled principle per round (skipped when nothing uses
    the revisions: contrastive pairs without SFT on revisions)."""
    if ctx.config.pairs.source not in REVISION_SOURCES and not ctx.config.train.sft_on_revisions:
        log.info("critique skipped: pairs.source %s does not use revisions", ctx.config.pairs.source)
        with ctx.store.session() as session:
            ctx.complete(session, "critique")
        return
    samples = _samples(ctx)
    c = ctx.config.critique
    params = SamplingParams(c.max_new_tokens, c.temperature, c.top_p, seed=ctx.seed_for("critique"))
    by_category = ctx.config.pairs.principles_by_category
    drafts = [Draft(key=(ctx.iteration_index, s.id), prompt=s.prompt, response=s.response or "",
                    category=s.prompt_category if by_category else None) for s in samples]
    with ctx.reporter.task("critique + revise", 2 * c.rounds * len(drafts)) as advance:
        chains = critique_and_revise(ctx.engines.policy, ctx.sampler, drafts, rounds=c.rounds, params=params,
                                     progress=advance)
    with ctx.store.session() as session:
        for sample, chain in zip(samples, chains, strict=True):
            for step in chain:
                session.add(Critique(sample_id=sample.id, round=step.round, principle_id=step.principle_id,
                                     critique=step.critique, revision=step.revision,
                                     constitution_hash=ctx.constitution_hash))
            session.get(Sample, sample.id).revision = chain[-1].revision
        ctx.complete(session, "critique")


def _contrasts(ctx: IterationContext) -> list[tuple[Contrast, Sample]]:
    with ctx.store.session() as session:
        return [tuple(row) for row in session.execute(
            select(Contrast, Sample).join(Sample, Contrast.sample_id == Sample.id)
            .where(Sample.iteration_id == ctx.iteration_id).order_by(Contrast.id)).all()]


def judge_revisions(ctx: IterationContext) -> None:
    """The judge compares each original answer (A) with its final revision (B) under a sampled principle, and
    (pairs.confirm) each negative contrastive answer (A) with the positive one (B) under its principle."""
    j, source = ctx.config.judge, ctx.config.pairs.source
    jobs: list[tuple[str, int, Matchup]] = []
    samples = _samples(ctx)
    if source in REVISION_SOURCES:
        for s in samples:
            jobs.append(("revision", s.id, Matchup(s.prompt, s.response or "", s.revision or "",
                                                   _principle(ctx, s, "judge"))))
    if source in CONTRASTIVE_SOURCES and ctx.config.pairs.confirm:
        shard = {s.id for s in samples}
        for contrast, s in _contrasts(ctx):
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
        ctx.complete(session, "judge")


def _candidates(ctx: IterationContext, dropped: Counter[str]) -> list[Candidate]:
    """This iteration's labelled pairs from the configured source, before sampling."""
    source, margin = ctx.config.pairs.source, ctx.config.judge.margin
    label_range = ctx.config.judge.label_range
    certain = label_range[1]  # the soft label of a pair labelled by construction
    contrasts = _contrasts(ctx) if source in CONTRASTIVE_SOURCES else []
    candidates: list[Candidate] = []
    with ctx.store.session() as session:
        comparisons = {(c.kind, c.sample_id): c for c in session.scalars(
            select(Comparison).join(Sample, Comparison.sample_id == Sample.id)
            .where(Sample.iteration_id == ctx.iteration_id))}
        for s in session.scalars(select(Sample).where(Sample.iteration_id == ctx.iteration_id).order_by(Sample.id)):
            verdict = comparisons.get(("revision", s.id))
            if source in ("revision", "mixed") and verdict is not None:
                if not verdict.abstained and verdict.p_b < 0.5 - margin:
                    dropped["judge-disagrees"] += 1
                else:
                    candidates.append(Candidate(s.prompt, s.revision or "", s.response or "", certain,
                                                verdict.principle_id, "revision", (s.id, verdict.id, True)))
            elif source == "judged" and verdict is not None:
                if verdict.abstained:
                    dropped["abstained"] += 1
                    continue
                p_b = clamp(verdict.p_b, label_range)
                revision_wins = p_b > 0.5
                chosen, rejected = (s.revision, s.response) if revision_wins else (s.response, s.revision)
                candidates.append(Candidate(s.prompt, chosen or "", rejected or "", max(p_b, 1 - p_b),
                                            verdict.principle_id, "judged", (s.id, verdict.id, revision_wins)))
        for contrast, s in contrasts:
            verdict = comparisons.get(("contrastive", s.id))
            if verdict is not None and not verdict.abstained and verdict.p_b < 0.5 - margin:
                dropped["judge-disagrees"] += 1
                continue
            candidates.append(Candidate(s.prompt, contrast.positive, contrast.negative, certain,
                                        contrast.principle_id, "contrastive",
                                        (s.id, verdict.id if verdict else None, False)))
    return candidates


def build_pairs(ctx: IterationContext) -> None:
    """The preference sampler: hygiene (empty, equal, injected texts), confidence above the annealed margin,
    de-duplication against earlier iterations, length-bias control and stratification across principles.
    Every drop is counted by reason in the iteration's metrics."""
    sampler = ctx.config.pairs.sampler
    dropped: Counter[str] = Counter()
    candidates = _candidates(ctx, dropped)
    margin = anneal(ctx.iteration_index, ctx.config.judge.margin, sampler.margin_end, sampler.anneal_iterations)
    with ctx.store.session() as session:
        seen = set(session.scalars(select(Pair.key).where(
            Pair.iteration_id != ctx.iteration_id, Pair.key.is_not(None)))) if sampler.deduplicate else set()
    result = sample_pairs(candidates, margin=margin, length_tolerance=sampler.length_tolerance,
                          max_pairs=sampler.max_pairs, seen=seen, dropped=dropped)
    with ctx.store.session() as session:
        for c in result.kept:
            sample_id, comparison_id, chosen_is_revision = c.ref
            session.add(Pair(comparison_id=comparison_id, iteration_id=ctx.iteration_id, chosen=c.chosen,
                             rejected=c.rejected, chosen_is_revision=chosen_is_revision, target=c.target,
                             sample_id=sample_id, source=c.source, principle_id=c.principle_id, key=c.key))
        values = {f"dropped_{reason}": n for reason, n in result.dropped.items()}
        values |= {"margin": margin, "candidates": len(candidates),
                   "length_diff_before": result.length_difference_before,
                   "length_diff_after": result.length_difference_after}
        session.add_all(Metric(iteration_id=ctx.iteration_id, stage="pairs", name=k, value=float(v))
                        for k, v in values.items() if v is not None)
        ctx.complete(session, "pairs")


Stage = Callable[[IterationContext], None]
STAGES: dict[str, Stage] = {
    "generate": generate,
    "critique": critique,
    "judge": judge_revisions,
    "pairs": build_pairs,
    "train": train,
    "evaluate": evaluate,
}
