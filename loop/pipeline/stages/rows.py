"""What several stages read the same way: this shard's samples, the iteration's contrasts, a sample's principle;
how a stage with nothing to do records itself done, and how it counts answers that spell control tokens."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from critique.pairs import PAIR_SOURCES, PairSource
from loop.store import Contrast, Metric, Sample
from loop.store.queries import iteration_samples
from policies.serving.control_tokens import CONTROL_TOKENS_IN_ANSWERS, contains_control_tokens

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext

log = logging.getLogger(__name__)


def shard_samples(ctx: IterationContext) -> list[Sample]:
    """The samples of this context's shard (all of them unless the daemon split the stage)."""
    with ctx.store.session() as session:
        return ctx.mine(iteration_samples(session, ctx.iteration_id))


def principle_for(ctx: IterationContext, sample: Sample, step: str):
    """The principle drawn for one step of a sample: among those that apply to its prompt's category when the
    config says so."""
    category = sample.prompt_category if ctx.config.pairs.principles_by_category else None
    return ctx.sampler.sample((ctx.iteration_index, sample.id), step, category=category)


def contrasts(ctx: IterationContext) -> list[tuple[Contrast, Sample]]:
    """The iteration's contrasts with their samples, in contrast order."""
    with ctx.store.session() as session:
        return [tuple(row) for row in session.execute(
            select(Contrast, Sample).join(Sample, Contrast.sample_id == Sample.id)
            .where(Sample.iteration_id == ctx.iteration_id).order_by(Contrast.id)).all()]


def pair_source(ctx: IterationContext) -> PairSource:
    """The configured `pairs.source`: what it needs of the stages before the pairs stage."""
    return PAIR_SOURCES[ctx.config.pairs.source]


def skip(ctx: IterationContext, why: str) -> None:
    """Record this stage (shard) done without work, and say why in one line."""
    log.info("%s skipped: %s", ctx.stage, why)
    with ctx.store.session() as session:
        ctx.complete(session)


def skipped_under_grpo(ctx: IterationContext) -> bool:
    """With `train.trainer: grpo` the iteration makes no answers, revisions, verdicts or pairs (GRPO samples and
    scores its own rollouts of the prompts in the train stage): the stage records itself done and says so."""
    if ctx.config.train.trainer != "grpo":
        return False
    skip(ctx, "train.trainer grpo samples and scores its own rollouts in the train stage")
    return True


def count_control_tokens(ctx: IterationContext, session: Session, answers: Iterable[tuple[int, str]]) -> int:
    """Record how many of the stage shard's (sample id, answer) spell a control token of the policy's tokenizer.

    Such text is neutralised wherever it is shown to a model again, so it never acts as one; the count says how
    often the policy writes it (a policy learning to forge turns shows here first). Logged with its samples.
    """
    flagged = [sample_id for sample_id, text in answers if contains_control_tokens(text, ctx.engines.specials)]
    if flagged:
        log.warning("%s: %d answers spell a control token (samples %s)", ctx.stage, len(flagged),
                    ", ".join(map(str, sorted(set(flagged)))))
    session.add(Metric(iteration_id=ctx.iteration_id, stage=ctx.stage.value, name=CONTROL_TOKENS_IN_ANSWERS,
                       value=float(len(flagged)), step=None))
    return len(flagged)
