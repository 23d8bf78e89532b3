"""A sample's verdict and, when it made no pair, why: the pairs stage's per-pair rules applied again to what the
store holds (`critique.pairs`), for the dashboard's sample views."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from critique.pairs import PairRules, revision_pair, sampler_reason
from loop.config.run import JudgeSettings, PairSettings
from loop.store import Comparison, Metric, Run, Sample


def verdict_of(comparison: Comparison | None) -> str | None:
    """Which answer the judge preferred (the mean of both orders): the revision, the response, a tie, or none."""
    if comparison is None:
        return None
    if comparison.abstained:
        return "abstained"
    return "revision" if comparison.p_b > 0.5 else "response" if comparison.p_b < 0.5 else "tie"


def pair_rules(run: Run | None) -> PairRules:
    """The pair rules the run's pairs stage applied, read from its stored config through the config's own models
    (so their defaults), not copied here."""
    config = run.config if run else {}
    judge = JudgeSettings.model_validate(config.get("judge") or {})
    pairs = PairSettings.model_validate(config.get("pairs") or {})
    return PairRules(pairs.source, judge.margin, judge.label_range, pairs.sampled.margin)


@dataclass(frozen=True)
class UncheckedVerdict:
    """A verdict of an older run, read without migrating its database: it has no consistency-check flag, since
    its verdicts were never checked."""

    id: int
    p_b: float
    abstained: bool
    principle_id: str
    suspect: bool = False


def drop_reason(sample: Sample, comparison: Comparison | None, margin: float | None, rules: PairRules) -> str:
    """Why a sample became no pair. The sampler counts drops per iteration, not per sample, so this re-applies
    the pairs stage's per-pair rules (`critique.pairs`: abstention, a suspect verdict, the judge's veto, hygiene,
    confidence under the iteration's `margin`); what is left was dropped by a rule over the whole iteration
    (de-duplication, length-bias control, the limit)."""
    if comparison is None:
        return "not judged (this iteration's pair source does not use the revision)"
    candidate = revision_pair(sample, comparison, rules)
    reason = candidate if isinstance(candidate, str) else sampler_reason(candidate, margin)
    if reason == "abstained":
        return "abstained: the judge gave no usable verdict"
    if reason == "judge-disagrees":
        return "judge-disagrees: the judge confidently preferred the original answer"
    if reason == "injection-suspect":
        return "injection-suspect: the winner stopped winning without one part of it (the consistency check)"
    if reason == "not-confident":
        return f"not-confident: the judge's label is within {margin:.2f} of a coin flip"
    if reason:
        return f"{reason}: failed label hygiene"
    return "dropped by de-duplication, length-bias control or the pair limit (see the iteration's drop counts)"


def iteration_margins(session: Session) -> dict[int, float]:
    return dict(session.execute(select(Metric.iteration_id, Metric.value).where(
        Metric.stage == "pairs", Metric.name == "margin", Metric.step.is_(None))).all())
