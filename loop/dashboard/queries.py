"""What the dashboard shows, read from the store: plain dicts and lists that the pages and the JSON API share.

The iteration summary, gate and review queries are `loop.operate.summary`'s; this module adds the views across
iterations, per sample and per principle."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, undefer

from critique.injection import is_injection
from loop.dashboard.answers import sampled_answers, sampled_drop_reason
from loop.dashboard.verdicts import UncheckedVerdict, drop_reason, iteration_margins, pair_rules, verdict_of
from loop.operate.promotion import evaluation_metrics, unresolved_halt
from loop.operate.summary import iteration_summary, latest_reviews, review_agreement
from loop.pipeline.names import StageName
from loop.store import (
    Comparison,
    Critique,
    EvalMetric,
    Evaluation,
    GateDecision,
    Iteration,
    Metric,
    Pair,
    PolicyMove,
    Run,
    RunLease,
    Sample,
    StageRun,
)
from loop.store.lease import describe as describe_lease
from loop.store.lease import holder_gone
from loop.store.queries import (
    count,
    has_column,
    has_table,
    iteration_by_index,
    iteration_indexes,
    latest_iteration,
    run_policies,
    run_row,
)

STAGE_ORDER = tuple(stage.value for stage in StageName)
"""The order `loop.pipeline.stages.STAGES` runs them in."""

CHARTS = (
    ("win_rate_vs_previous", "judge win rate vs. previous policy"),
    ("harmful_safe_rate", "harmlessness: harmful requests handled safely"),
    ("benign_refusal_rate", "over-refusal: benign-but-risky requests refused"),
    ("kl_vs_reference", "KL(candidate ‖ base), nats per answer"),
    ("mean_length_chars", "mean answer length, characters"),
    ("reward_margin_after", "reward margin after training"),
)
"""The charts across iterations: an evaluation metric, or a training metric (stage train, no step)."""

LOSS_CURVES = ("loss", "reward_margin", "reward_accuracy", "reward_mean")
VERDICTS = ("revision", "response", "tie", "abstained")
FLAGS = ("paired", "dropped", "reviewed", "unreviewed", "injection")


def lease_state(session: Session, run: Run) -> dict[str, Any] | None:
    """Who holds the run now (the daemon or a `cai` command), from the lease row; None when nobody does, or when
    the holder is gone (killed: the next `cai` takes the lease over)."""
    row = session.get(RunLease, run.name)
    if row is None or holder_gone(row):
        return None
    return {"holder": describe_lease(row), "host": row.host, "pid": row.pid,
            "heartbeat_age_s": round(time.time() - row.heartbeat, 1)}


def control_state(session: Session, run: Run) -> str | None:
    """running | paused | stopping, once operator control exists in this cai (`loop.operate.control`)."""
    try:
        from loop.operate.control import run_state
    except ImportError:
        return None
    return run_state(session, run.id) if has_table(session, "control_requests") else "running"


def progress(session: Session) -> dict[str, Any]:
    """Where the run is: the latest iteration, its finished stages with their times, the stage that runs next and
    who holds the run. Polled by the pages for live progress."""
    run = run_row(session)
    if run is None:
        return {"run": None}
    iteration = latest_iteration(session)
    result: dict[str, Any] = {"run": run.name, "current_policy": f"v{run.current_policy}",
                              "lease": lease_state(session, run), "state": control_state(session, run),
                              "iteration": None}
    if iteration is None:
        return result
    done = {s.stage: s for s in session.scalars(select(StageRun).where(StageRun.iteration_id == iteration.id))}
    pending = [stage for stage in STAGE_ORDER if stage not in done]
    last = max((s.finished_at for s in done.values()), default=iteration.started_at)
    result["iteration"] = {
        "index": iteration.index, "status": iteration.status,
        "stages": [{"stage": stage, "done": stage in done,
                    "wall_s": round(done[stage].wall_s, 2) if stage in done else None} for stage in STAGE_ORDER],
        "running": pending[0] if pending and iteration.status == "running" and result["lease"] else None,
        "since": (last if last.tzinfo else last.replace(tzinfo=UTC)).isoformat(),  # stored as naive UTC
    }
    return result


def alarms(session: Session, run: Run) -> list[str]:
    """What needs an operator: an unresolved halt, a rejected latest candidate, a stale lease."""
    found = []
    halt = unresolved_halt(session, run.id)
    if halt is not None:
        reasons = "; ".join(c["reason"] for c in halt.checks if not c["passed"])
        found.append(f"halted: candidate v{halt.candidate_version} was judged a severe regression ({reasons}); "
                     "roll back or promote to resume")
    latest = session.scalar(select(GateDecision).where(GateDecision.run_id == run.id)
                            .order_by(GateDecision.id.desc()))
    if latest is not None and latest.outcome == "reject":
        reasons = "; ".join(c["reason"] for c in latest.checks if not c["passed"])
        found.append(f"latest candidate v{latest.candidate_version} rejected: {reasons}")
    return found


def overview(session: Session) -> dict[str, Any]:
    run = run_row(session)
    if run is None:
        return {"run": None}
    iteration = latest_iteration(session)
    policies = [{"version": f"v{p.version}", "parent": None if p.parent_version is None else f"v{p.parent_version}",
                 "trainer": p.trainer, "pairs": p.pairs, "created_at": p.created_at.isoformat(),
                 "current": p.version == run.current_policy}
                for p in run_policies(session, run.id)]
    moves = [{"from": f"v{m.from_version}", "to": f"v{m.to_version}", "kind": m.kind, "reason": m.reason,
              "at": m.created_at.isoformat()}
             for m in session.scalars(select(PolicyMove).where(PolicyMove.run_id == run.id)
                                      .order_by(PolicyMove.id.desc()).limit(10))]
    iterations = [{"index": i.index, "status": i.status, "policy_in": f"v{i.policy_version}",
                   "started_at": i.started_at.isoformat(),
                   "gate": session.scalar(select(GateDecision.outcome).where(GateDecision.iteration_id == i.id))}
                  for i in session.scalars(select(Iteration).where(Iteration.run_id == run.id)
                                           .order_by(Iteration.index))]
    return {"run": run.name, "created_at": run.created_at.isoformat(), "current_policy": f"v{run.current_policy}",
            "state": control_state(session, run), "lease": lease_state(session, run), "alarms": alarms(session, run),
            "policies": policies, "moves": moves, "iterations": iterations,
            "latest": iteration_summary(session, iteration) if iteration else None}


def series(session: Session) -> dict[str, list[tuple[int, float]]]:
    """Each chart's points across iterations: (iteration index, value)."""
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    names = [name for name, _ in CHARTS]
    for index, name, value in session.execute(
            select(Iteration.index, EvalMetric.name, EvalMetric.value)
            .join(Evaluation, Evaluation.iteration_id == Iteration.id)
            .join(EvalMetric, EvalMetric.evaluation_id == Evaluation.id)
            .where(EvalMetric.name.in_(names)).order_by(Iteration.index, Evaluation.id)):
        points[name] = [p for p in points[name] if p[0] != index] + [(index, value)]  # the latest evaluation
    for index, name, value in session.execute(
            select(Iteration.index, Metric.name, Metric.value).join(Metric, Metric.iteration_id == Iteration.id)
            .where(Metric.stage == "train", Metric.step.is_(None), Metric.name.in_(names))
            .order_by(Iteration.index, Metric.id)):
        points[name].append((index, value))
    return {name: points.get(name, []) for name in names}


def loss_curves(session: Session, iteration_id: int) -> dict[str, list[tuple[int, float]]]:
    """The trainers' per-step logs of one iteration: `STAGE loss` → [(step, value)]."""
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for m in session.scalars(select(Metric).where(Metric.iteration_id == iteration_id, Metric.step.is_not(None),
                                                  Metric.name.in_(LOSS_CURVES)).order_by(Metric.step, Metric.id)):
        curves[f"{m.stage} {m.name}"].append((m.step, m.value))
    return dict(curves)


def iteration_page(session: Session, index: int) -> dict[str, Any] | None:
    iteration = iteration_by_index(session, index)
    if iteration is None:
        return None
    counts = {stage: n for stage, n in session.execute(
        select(StageRun.stage, func.count()).where(StageRun.iteration_id == iteration.id).group_by(StageRun.stage))}
    return {"summary": iteration_summary(session, iteration), "shards": counts,
            "series": series(session), "losses": loss_curves(session, iteration.id),
            "indexes": iteration_indexes(session)}


@dataclass
class SampleFilter:
    iteration: int | None = None
    principle: str | None = None
    category: str | None = None
    verdict: str | None = None
    flag: str | None = None


def _sample_rows(session: Session, where, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """Samples with their principles, verdict, pair and latest review (one query per table, not per sample)."""
    samples = list(session.scalars(select(Sample).where(*where).order_by(Sample.id).offset(offset).limit(limit)))
    ids = [s.id for s in samples]
    critiques: dict[int, list[Critique]] = defaultdict(list)
    for c in session.scalars(select(Critique).where(Critique.sample_id.in_(ids)).order_by(Critique.round)):
        critiques[c.sample_id].append(c)
    checked = has_column(session, Comparison.__tablename__, "suspect")
    comparisons = {c.sample_id: c for c in session.scalars(
        select(Comparison).options(*[undefer(Comparison.suspect)] if checked else [])
        .where(Comparison.sample_id.in_(ids), Comparison.kind == "revision").order_by(Comparison.id))}
    pairs = {p.sample_id: p for p in session.scalars(select(Pair).where(Pair.sample_id.in_(ids)).order_by(Pair.id))}
    reviews = latest_reviews(session)
    indexes = dict(session.execute(select(Iteration.id, Iteration.index)).all())
    margins = iteration_margins(session)
    rules = pair_rules(run_row(session))
    rows = []
    for s in samples:
        comparison, pair = comparisons.get(s.id), pairs.get(s.id)
        review = reviews.get(pair.id) if pair else None
        flags = {"paired" if pair else "dropped", "reviewed" if review else "unreviewed"}
        if any(is_injection(text) for text in (s.response, s.revision) if text):
            flags.add("injection")  # an answer addressed to the judge (the sampler drops such pairs)
        rows.append({
            "id": s.id, "iteration": indexes[s.iteration_id], "category": s.prompt_category,
            "prompt_id": s.prompt_id, "prompt": s.prompt, "response": s.response, "revision": s.revision,
            "policy": f"v{s.policy_version}", "constitution_hash": s.constitution_hash,
            "critiques": [{"round": c.round, "principle": c.principle_id, "critique": c.critique,
                           "revision": c.revision} for c in critiques[s.id]],
            "comparison": None if comparison is None else {
                "principle": comparison.principle_id, "method": comparison.method, "judge": comparison.judge,
                "p_b_when_second": comparison.p_b_when_second, "p_b_when_first": comparison.p_b_when_first,
                "p_b": comparison.p_b, "abstained": comparison.abstained},
            "verdict": verdict_of(comparison),
            "pair": None if pair is None else {
                "id": pair.id, "source": pair.source, "target": pair.target, "principle": pair.principle_id,
                "chosen_is_revision": pair.chosen_is_revision, "chosen": pair.chosen, "rejected": pair.rejected},
            "drop_reason": None if pair else drop_reason(
                s, comparison if checked or comparison is None else UncheckedVerdict(
                    comparison.id, comparison.p_b, comparison.abstained, comparison.principle_id),
                margins.get(s.iteration_id), rules),
            "review": None if review is None else {"verdict": review.verdict, "note": review.note,
                                                   "reviewer": review.reviewer,
                                                   "at": review.created_at.isoformat()},
            "principles": sorted({c.principle_id for c in critiques[s.id]}
                                 | ({comparison.principle_id} if comparison else set())),
            "flags": sorted(flags),
        })
    return rows


def samples(session: Session, filters: SampleFilter, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    where = []
    if filters.iteration is not None:
        where.append(Sample.iteration_id.in_(select(Iteration.id).where(Iteration.index == filters.iteration)))
    if filters.category:
        where.append(Sample.prompt_category == filters.category)
    if filters.principle:
        where.append(Sample.id.in_(select(Critique.sample_id).where(Critique.principle_id == filters.principle)
                                   .union(select(Comparison.sample_id)
                                          .where(Comparison.principle_id == filters.principle))))
    page: dict[str, Any] = {"offset": offset, "limit": limit, "choices": sample_choices(session)}
    if not filters.verdict and not filters.flag:  # all in SQL: only the page's samples are read
        return {**page, "total": count(session, Sample, *where),
                "samples": _sample_rows(session, where, limit=limit, offset=offset)}
    rows = [r for r in _sample_rows(session, where)
            if (not filters.verdict or r["verdict"] == filters.verdict)
            and (not filters.flag or filters.flag in r["flags"])]
    return {**page, "total": len(rows), "samples": rows[offset:offset + limit]}


def sample_choices(session: Session) -> dict[str, list[Any]]:
    """The values each filter can take in this run."""
    principles = set(session.scalars(select(Critique.principle_id).distinct())) | set(
        session.scalars(select(Comparison.principle_id).distinct()))
    return {"iteration": iteration_indexes(session),
            "principle": sorted(principles),
            "category": list(session.scalars(select(Sample.prompt_category).distinct()
                                             .order_by(Sample.prompt_category))),
            "verdict": list(VERDICTS), "flag": list(FLAGS)}


def sample(session: Session, sample_id: int) -> dict[str, Any] | None:
    """A sample's row, with its sampled answers and each one's reward components (the sampled source)."""
    rows = _sample_rows(session, [Sample.id == sample_id])
    if not rows:
        return None
    row = rows[0]
    row["answers"] = sampled_answers(session, sample_id)
    if row["answers"] and not row["pair"]:
        row["drop_reason"] = sampled_drop_reason(session, sample_id, pair_rules(run_row(session)))
    return row


def principle_stats(session: Session) -> list[dict[str, Any]]:
    """Per principle: times sampled (critique rounds and verdicts), revision acceptance (the judge preferred the
    revision), judge agreement (both orders lean the same way), pairs, and the latest evaluation's violation rate."""
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    for principle, in session.execute(select(Critique.principle_id)):
        stats[principle]["critiques"] += 1
    for c in session.scalars(select(Comparison).where(Comparison.kind == "revision")):
        s = stats[c.principle_id]
        s["verdicts"] += 1
        if c.abstained:
            s["abstained"] += 1
            continue
        s["answered"] += 1
        s["revision_better"] += c.p_b > 0.5
        if c.method != "pointwise":
            s["ordered"] += 1
            s["orders_agree"] += (c.p_b_when_second > 0.5) == (c.p_b_when_first > 0.5)
    for principle, n in session.execute(select(Pair.principle_id, func.count()).group_by(Pair.principle_id)):
        if principle:
            stats[principle]["pairs"] += n
    latest = session.scalar(select(Evaluation.id).where(Evaluation.iteration_id.is_not(None))
                            .order_by(Evaluation.id.desc()))
    violations = {name.removeprefix("violation_rate:"): value for name, value in
                  (evaluation_metrics(session, latest) if latest else {}).items()
                  if name.startswith("violation_rate:")}
    rows = []
    for principle in sorted(stats.keys() | violations.keys()):
        s = stats[principle]
        rows.append({"principle": principle, "critiques": s["critiques"], "verdicts": s["verdicts"],
                     "times_sampled": s["critiques"] + s["verdicts"],
                     "revision_acceptance": s["revision_better"] / s["answered"] if s["answered"] else None,
                     "judge_agreement": s["orders_agree"] / s["ordered"] if s["ordered"] else None,
                     "abstained": s["abstained"], "pairs": s["pairs"], "violation_rate": violations.get(principle)})
    return rows


def review_queue(session: Session, *, iteration: int | None = None, pending_only: bool = True,
                 limit: int = 50) -> dict[str, Any]:
    """Pairs with their AI label and latest review; unreviewed ones first when `pending_only` is off."""
    query = (select(Pair, Iteration.index, Sample.prompt).join(Iteration, Pair.iteration_id == Iteration.id)
             .outerjoin(Sample, Pair.sample_id == Sample.id).order_by(Pair.id))
    if iteration is not None:
        query = query.where(Iteration.index == iteration)
    reviews = latest_reviews(session)
    rows = []
    for pair, index, prompt in session.execute(query):
        review = reviews.get(pair.id)
        if pending_only and review is not None:
            continue
        rows.append({"id": pair.id, "iteration": index, "sample_id": pair.sample_id, "source": pair.source,
                     "principle": pair.principle_id, "target": pair.target, "prompt": prompt,
                     "chosen": pair.chosen, "rejected": pair.rejected,
                     "review": None if review is None else {"verdict": review.verdict, "note": review.note,
                                                            "reviewer": review.reviewer,
                                                            "at": review.created_at.isoformat()}})
    return {"pairs": rows[:limit], "total": len(rows), "agreement": review_agreement(session, None)}


def control_requests(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """The operators' latest requests and what came of them (`loop.operate.control`)."""
    if not has_table(session, "control_requests"):
        return []
    from loop.store import ControlRequest

    return [{"id": r.id, "action": r.action, "to": None if r.to_version is None else f"v{r.to_version}",
             "note": r.note, "by": r.requested_by, "at": r.requested_at.isoformat(),
             "applied_at": r.applied_at.isoformat() if r.applied_at else None, "outcome": r.outcome}
            for r in session.scalars(select(ControlRequest).order_by(ControlRequest.id.desc()).limit(limit))]
