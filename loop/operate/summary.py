"""The summary of an iteration, computed from the store only: `cai iterate` and `cai status` share it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from loop.operate.promotion import evaluation_metrics
from loop.pipeline.names import StageName
from loop.store import (
    Comparison,
    Contrast,
    Critique,
    Iteration,
    IterationInputs,
    Metric,
    Pair,
    Review,
    Run,
    Sample,
    SampledAnswer,
    StageRun,
    queries,
)
from loop.store.queries import (
    count,
    decision_of_iteration,
    evaluation_of_iteration,
    has_column,
    has_table,
    policy_of_iteration,
)
from policies.serving.control_tokens import CONTROL_TOKENS_IN_ANSWERS

SERVING_METRICS = ("prefix_cache_hit_rate", "generated_tokens_per_s")
"""Recorded per stage from the vLLM server's counters (vllm-server backend only)."""


def latest_iteration(session: Session, index: int | None = None) -> Iteration | None:
    """The iteration `cai status` shows: the latest, or the one numbered `index`."""
    return queries.latest_iteration(session) if index is None else queries.iteration_by_index(session, index)


def iteration_summary(session: Session, iteration: Iteration) -> dict[str, Any]:
    in_iteration = Sample.iteration_id == iteration.id
    sample_ids = select(Sample.id).where(in_iteration)
    comparisons = select(Comparison.p_b, Comparison.p_b_when_second, Comparison.p_b_when_first, Comparison.kind,
                         Comparison.method, Comparison.abstained).where(Comparison.sample_id.in_(sample_ids)).subquery()
    answered = comparisons.c.abstained.is_(False)
    revision_verdicts = (answered, comparisons.c.kind == "revision")
    mean_p = session.scalar(select(func.avg(comparisons.c.p_b)).where(*revision_verdicts))
    # Both orders leaning the same way: how often the judge is not just following position (pointwise scores
    # show no order, so they have none to report).
    agreeing = session.scalar(select(
        # CASE, not a cast of a boolean: PostgreSQL has no boolean-to-float cast.
        func.avg(case(((comparisons.c.p_b_when_second > 0.5) == (comparisons.c.p_b_when_first > 0.5), 1.0),
                      else_=0.0)),
    ).where(*revision_verdicts, comparisons.c.method != "pointwise"))
    abstained = session.scalar(select(func.count()).select_from(comparisons).where(~answered)) or 0
    suspect = session.scalar(select(func.count()).where(Comparison.suspect, Comparison.sample_id.in_(sample_ids))) \
        if has_column(session, Comparison.__tablename__, "suspect") else None
    methods = sorted(set(session.scalars(select(comparisons.c.method).distinct())))
    by_stage: dict[str, dict[str, float]] = {}
    for m in session.scalars(select(Metric).where(Metric.iteration_id == iteration.id, Metric.step.is_(None))
                             .order_by(Metric.id)):
        by_stage.setdefault(m.stage, {})[m.name] = m.value
    produced = policy_of_iteration(session, iteration.id)
    stages: dict[str, float] = {}
    for s in session.scalars(select(StageRun).where(StageRun.iteration_id == iteration.id).order_by(StageRun.id)):
        stages[s.stage] = round(stages.get(s.stage, 0.0) + s.wall_s, 2)  # a daemon's stage: its shards' sum
    run = session.get(Run, iteration.run_id)
    # More than one when the iteration was resumed with another constitution (`cai iterate --allow-changed`).
    recorded = select(IterationInputs.constitution_hash).where(IterationInputs.iteration_id == iteration.id)
    versioned = has_table(session, IterationInputs.__tablename__)  # not in unversioned runs
    hashes = list(dict.fromkeys(session.scalars(recorded.order_by(IterationInputs.id)) if versioned else []))
    hashes = hashes or [iteration.constitution_hash]
    return {
        "run": run.name,
        "iteration": iteration.index,
        "status": iteration.status,
        "constitution_hash": hashes[-1],
        "constitution_hashes": hashes,
        "policy_in": f"v{iteration.policy_version}",
        "policy_version": f"v{produced.version}" if produced else None,
        "adapter_path": produced.adapter_path if produced else None,
        "samples": count(session, Sample, in_iteration, Sample.response.is_not(None)),
        "answers_generated": generated_answers(session, sample_ids),
        "critiques": count(session, Critique, Critique.sample_id.in_(sample_ids)),
        "revisions": count(session, Critique, Critique.sample_id.in_(sample_ids), Critique.revision != ""),
        "comparisons": count(session, Comparison, Comparison.sample_id.in_(sample_ids)),
        "pairs": count(session, Pair, Pair.iteration_id == iteration.id),
        "judge": {
            "method": ", ".join(methods) or None,
            "mean_p_revision_better": mean_p,
            "order_agreement": agreeing,
            "abstained": abstained,
            "suspect": suspect,
        },
        "pair_sources": dict(session.execute(select(Pair.source, func.count()).where(
            Pair.iteration_id == iteration.id).group_by(Pair.source).order_by(Pair.source)).all()),
        "sampler": by_stage.get("pairs", {}),
        "review": review_agreement(session, iteration.id),
        "trainer": produced.trainer if produced else None,
        "train": by_stage.get("train", {}),
        "reward_model": by_stage.get("reward_model", {}),
        "sft": by_stage.get("sft", {}),
        "serving": {stage: {k: v for k, v in values.items() if k in SERVING_METRICS}
                    for stage, values in by_stage.items() if any(k in SERVING_METRICS for k in values)},
        "wall_s": stages,
        CONTROL_TOKENS_IN_ANSWERS: control_token_counts(session, iteration),
        "evaluation": evaluation_summary(session, iteration),
        "gate": gate_summary(session, iteration),
        "current_policy": f"v{run.current_policy}",
    }


def generated_answers(session: Session, sample_ids) -> int:
    """Every answer the generate stage wrote: a response per sample (or its K sampled answers, the first of which
    is the response) and both answers of each contrast."""
    responses = count(session, Sample, Sample.id.in_(sample_ids), Sample.response.is_not(None))
    sampled = count(session, SampledAnswer, SampledAnswer.sample_id.in_(sample_ids)) \
        if has_table(session, SampledAnswer.__tablename__) else 0
    return max(responses, sampled) + 2 * count(session, Contrast, Contrast.sample_id.in_(sample_ids))


def control_token_counts(session: Session, iteration: Iteration) -> dict[str, int]:
    """Per stage, the answers that spelled a control token: the policy's answers (generate), its revisions
    (critique, every round), summed over a daemon's shards, and the candidate's eval answers (evaluate)."""
    counts = dict(session.execute(
        select(Metric.stage, func.sum(Metric.value)).where(
            Metric.iteration_id == iteration.id, Metric.name == CONTROL_TOKENS_IN_ANSWERS, Metric.step.is_(None))
        .group_by(Metric.stage)).all())
    evaluation = evaluation_of_iteration(session, iteration.id)
    if evaluation is not None and CONTROL_TOKENS_IN_ANSWERS in (found := evaluation_metrics(session, evaluation.id)):
        counts["evaluate"] = found[CONTROL_TOKENS_IN_ANSWERS]
    return {stage.value: int(counts[stage.value]) for stage in StageName if stage.value in counts}


HEADLINE_METRICS = ("harmful_safe_rate", "benign_refusal_rate", "win_rate_vs_previous", "win_rate_vs_previous_lower",
                    "win_rate_vs_base", "position_consistency_vs_previous", "kl_vs_reference", "kl_vs_previous",
                    "mean_length_chars", "length_ratio", "violation_rate", "task_accuracy")


def evaluation_summary(session: Session, iteration: Iteration) -> dict[str, Any] | None:
    """The iteration's candidate evaluation: versions, classifier and every metric."""
    evaluation = evaluation_of_iteration(session, iteration.id)
    if evaluation is None:
        return None
    return {"policy": f"v{evaluation.policy_version}", "previous": f"v{evaluation.previous_version}",
            "refusal_classifier": evaluation.refusal_classifier, "wall_s": round(evaluation.wall_s, 2),
            "metrics": evaluation_metrics(session, evaluation.id)}


def gate_summary(session: Session, iteration: Iteration) -> dict[str, Any] | None:
    decision = decision_of_iteration(session, iteration.id)
    if decision is None:
        return None
    return {"outcome": decision.outcome,
            "candidate": None if decision.candidate_version is None else f"v{decision.candidate_version}",
            "current_policy": f"v{decision.current_version}",
            "reasons": [c["reason"] for c in decision.checks if not c["passed"]],
            "checks": decision.checks,
            "halt_resolved": decision.resolved_at.isoformat() if decision.resolved_at else None}


def latest_reviews(session: Session, iteration_id: int | None = None) -> dict[int, Review]:
    """The latest review of each reviewed pair (of one iteration, or of the run)."""
    query = select(Review).join(Pair, Review.pair_id == Pair.id).order_by(Review.id)
    if iteration_id is not None:
        query = query.where(Pair.iteration_id == iteration_id)
    return {review.pair_id: review for review in session.scalars(query)}


def review_agreement(session: Session, iteration_id: int | None = None) -> dict[str, Any]:
    """How often reviewers agreed with the AI label: kept / (kept + flipped); dropped pairs are counted apart."""
    verdicts = [r.verdict for r in latest_reviews(session, iteration_id).values()]
    kept, flipped = verdicts.count("keep"), verdicts.count("flip")
    return {"reviewed": len(verdicts), "kept": kept, "flipped": flipped, "dropped": verdicts.count("drop"),
            "agreement": kept / (kept + flipped) if kept + flipped else None}
