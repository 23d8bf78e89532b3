"""The stages of one iteration. Each reads its inputs from the store, does its work with no transaction
open, then writes its outputs and its completion record in one transaction: a finished stage is never
redone, and an interrupted one leaves nothing behind."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from critique.judge import Matchup, judge
from critique.pairs import choose
from critique.revision import Draft, critique_and_revise
from loop.context import IterationContext
from loop.evaluate_stage import evaluate
from loop.store import Comparison, Critique, Pair, Sample
from loop.train_stage import train
from policies.serving import SamplingParams

log = logging.getLogger(__name__)


def _samples(ctx: IterationContext) -> list[Sample]:
    with ctx.store.session() as session:
        return list(session.scalars(
            select(Sample).where(Sample.iteration_id == ctx.iteration_id).order_by(Sample.id)))


def generate(ctx: IterationContext) -> None:
    """π_i answers every sample's prompt."""
    samples = _samples(ctx)
    g = ctx.config.generation
    params = SamplingParams(g.max_new_tokens, g.temperature, g.top_p, seed=ctx.seed_for("generate"))
    with ctx.reporter.task("generate responses", len(samples)) as advance:
        responses = ctx.engines.policy.generate(
            [[{"role": "user", "content": s.prompt}] for s in samples], params, advance)
    with ctx.store.session() as session:
        for sample, response in zip(samples, responses, strict=True):
            session.get(Sample, sample.id).response = response
        ctx.complete(session, "generate")


def critique(ctx: IterationContext) -> None:
    """π_i critiques and revises its own answers, one sampled principle per round."""
    samples = _samples(ctx)
    c = ctx.config.critique
    params = SamplingParams(c.max_new_tokens, c.temperature, c.top_p, seed=ctx.seed_for("critique"))
    drafts = [Draft(key=(ctx.iteration_index, s.id), prompt=s.prompt, response=s.response or "") for s in samples]
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


def judge_revisions(ctx: IterationContext) -> None:
    """The judge compares each original answer (A) with its final revision (B) under a sampled principle."""
    samples = _samples(ctx)
    principles = [ctx.sampler.sample((ctx.iteration_index, s.id), "judge") for s in samples]
    matchups = [Matchup(s.prompt, s.response or "", s.revision or "", p)
                for s, p in zip(samples, principles, strict=True)]
    with ctx.reporter.task("judge (both orders)", 2 * len(matchups)) as advance:
        verdicts = judge(ctx.engines.judge, matchups, advance)
    with ctx.store.session() as session:
        for sample, principle, verdict in zip(samples, principles, verdicts, strict=True):
            session.add(Comparison(
                sample_id=sample.id, principle_id=principle.id, judge=ctx.engines.judge.name,
                p_b_when_second=verdict.p_b_when_second, p_b_when_first=verdict.p_b_when_first, p_b=verdict.p_b,
                constitution_hash=ctx.constitution_hash))
        ctx.complete(session, "judge")


def build_pairs(ctx: IterationContext) -> None:
    """Confident verdicts become preference pairs with the judge's probability as a soft label."""
    margin = ctx.config.judge.margin
    with ctx.store.session() as session:
        rows = session.execute(
            select(Comparison, Sample).join(Sample, Comparison.sample_id == Sample.id)
            .where(Sample.iteration_id == ctx.iteration_id).order_by(Comparison.id)).all()
        for comparison, sample in rows:
            choice = choose(comparison.p_b, margin)
            if choice is None:
                continue
            texts = (sample.revision, sample.response) if choice.chosen_is_b else (sample.response, sample.revision)
            session.add(Pair(comparison_id=comparison.id, iteration_id=ctx.iteration_id, chosen=texts[0],
                             rejected=texts[1], chosen_is_revision=choice.chosen_is_b, target=choice.target))
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
