"""The pairs stage: the configured pair source labels this iteration's candidates (`critique.pairs`), and the
preference sampler keeps those to train on."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import undefer

from critique.pairs import IterationRows, PairRules
from critique.sampler import Candidate, sample_pairs
from critique.sampler import annealed_margin as anneal
from loop.pipeline.names import StageName
from loop.pipeline.stages.rows import contrasts, pair_source, skipped_under_grpo
from loop.store import Comparison, Metric, Pair, Sample, SampledAnswer
from loop.store.queries import iteration_samples

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


def _candidates(ctx: IterationContext, dropped: Counter[str]) -> list[Candidate]:
    """This iteration's labelled pairs from the configured source, before sampling."""
    source = pair_source(ctx)
    judge = ctx.config.judge
    rules = PairRules(source.name, judge.margin, judge.label_range, ctx.config.pairs.sampled.margin)
    contrasted = contrasts(ctx) if source.contrasts else []
    with ctx.store.session() as session:
        verdicts = {(c.kind, c.sample_id): c for c in session.scalars(
            select(Comparison).options(undefer(Comparison.suspect)).join(Sample, Comparison.sample_id == Sample.id)
            .where(Sample.iteration_id == ctx.iteration_id))}
        samples = iteration_samples(session, ctx.iteration_id)
        answers: dict[int, list[SampledAnswer]] = defaultdict(list)
        if source.sampled:
            for answer in session.scalars(select(SampledAnswer).join(Sample, SampledAnswer.sample_id == Sample.id)
                                          .where(Sample.iteration_id == ctx.iteration_id)
                                          .order_by(SampledAnswer.id)):
                answers[answer.sample_id].append(answer)
        return source.candidates(IterationRows(samples, verdicts, contrasted, answers), rules, dropped)


def build_pairs(ctx: IterationContext) -> None:
    """The preference sampler: hygiene (empty, equal, injected texts), confidence above the annealed margin,
    de-duplication against earlier iterations, length-bias control and stratification across principles.
    Every drop is counted by reason in the iteration's metrics. Skipped under GRPO, which trains on no pairs."""
    if skipped_under_grpo(ctx):
        return
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
        session.add_all(Metric(iteration_id=ctx.iteration_id, stage=StageName.PAIRS.value, name=k, value=float(v))
                        for k, v in values.items() if v is not None)
        ctx.complete(session)
