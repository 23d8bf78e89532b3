"""The current-policy pointer: moved by the gates' decision at the end of an iteration, moved back by an
operator's rollback; every move is recorded with its reason. A halt blocks new iterations until an operator
acts."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from loop.evaluation.gates import Decision, GateSettings, decide, no_candidate
from loop.store import EvalMetric, GateDecision, PolicyMove, Run, utcnow
from loop.store.queries import (
    decision_of_iteration,
    evaluation_of_iteration,
    policy,
    policy_of_iteration,
    run_policies,
    unresolved_halts,
)


class RunHalted(RuntimeError):
    pass


class RollbackError(ValueError):
    pass


def evaluation_metrics(session: Session, evaluation_id: int) -> dict[str, float]:
    return {m.name: m.value for m in session.scalars(
        select(EvalMetric).where(EvalMetric.evaluation_id == evaluation_id).order_by(EvalMetric.id))}


def _move(session: Session, run: Run, to: int, kind: str, reason: str) -> PolicyMove:
    move = PolicyMove(run_id=run.id, from_version=run.current_policy, to_version=to, kind=kind, reason=reason)
    session.add(move)
    run.current_policy = to
    return move


def decide_iteration(session: Session, run_id: int, iteration_id: int, gates: GateSettings) -> GateDecision:
    """Apply the gates to the iteration's candidate (once: a resumed iteration reads its recorded decision)."""
    recorded = decision_of_iteration(session, iteration_id)
    if recorded is not None:
        return recorded
    run = session.get(Run, run_id)
    candidate = policy_of_iteration(session, iteration_id)
    evaluation = None
    if candidate is None:
        decision: Decision = no_candidate()
    else:
        evaluation = evaluation_of_iteration(session, iteration_id)
        decision = decide(evaluation_metrics(session, evaluation.id) if evaluation else {}, gates)
    if decision.outcome == "promote":
        _move(session, run, candidate.version, "promote", "gates passed: " + "; ".join(
            c.reason for c in decision.checks))
    row = GateDecision(run_id=run_id, iteration_id=iteration_id, evaluation_id=evaluation and evaluation.id,
                       candidate_version=candidate and candidate.version, current_version=run.current_policy,
                       outcome=decision.outcome, checks=[c.as_dict() for c in decision.checks])
    session.add(row)
    return row


def unresolved_halt(session: Session, run_id: int) -> GateDecision | None:
    halts = unresolved_halts(session, run_id)
    return halts[0] if halts else None


def ensure_not_halted(session: Session, run_id: int) -> None:
    halt = unresolved_halt(session, run_id)
    if halt is not None:
        reasons = "; ".join(c["reason"] for c in halt.checks if not c["passed"])
        raise RunHalted(f"the run is halted since candidate v{halt.candidate_version} was judged a severe "
                        f"regression ({reasons}); inspect it with `cai eval`, then resume with `cai rollback` "
                        f"(--to V to choose the policy; the current one is v{halt.current_version})")


def _operator_move(session: Session, run: Run, to: int, kind: str, reason: str) -> PolicyMove:
    """An operator's move to a recorded policy; it acts on the run, so it resolves any halt."""
    if policy(session, run.id, to) is None:
        known = ", ".join(f"v{p.version}" for p in run_policies(session, run.id))
        raise RollbackError(f"no policy v{to} in this run (it has {known})")
    for halt in unresolved_halts(session, run.id):
        halt.resolved_at = utcnow()
    return _move(session, run, to, kind, reason)


def rollback(session: Session, run_id: int, to: int | None, reason: str) -> PolicyMove:
    """Move the pointer to `to` (default: the policy the current one was trained from); resolves a halt."""
    run = session.get(Run, run_id)
    if to is None:
        current = policy(session, run_id, run.current_policy)
        if current.parent_version is None:
            raise RollbackError(f"the current policy v{run.current_policy} is the base model: nothing to roll "
                                "back to (name one with --to)")
        to = current.parent_version
    return _operator_move(session, run, to, "rollback", reason)


def promote(session: Session, run_id: int, to: int, reason: str) -> PolicyMove:
    """Make a recorded policy current against the gates' decision (an operator's call); resolves a halt."""
    return _operator_move(session, session.get(Run, run_id), to, "promote", reason)
