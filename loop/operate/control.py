"""What operators ask of a run, from any process: pause, resume or stop the daemon; promote or roll back a policy.

Requests are rows (`control_requests`), so the CLI, the dashboard and the daemon, on any host, see the same ones
and every request stays on record with who made it, when, and what came of it. Pause and resume set a state that
persists (a restarted daemon stays paused); a stop is one-shot: pending until the daemon acknowledges it as it
stops. A policy move needs the run's lease, because an iteration in progress reads the current policy: `operate`
applies it at once when no live process holds the lease, and otherwise leaves it queued for the holder, which
applies it between iterations (`apply_moves`).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from loop.operate.promotion import RollbackError, promote, rollback
from loop.store import ControlRequest, Run, Store, utcnow
from loop.store.lease import LeaseHeld, acquire
from loop.store.queries import run_row

ACTIONS = ("pause", "resume", "stop", "promote", "rollback")
MOVES = ("promote", "rollback")
STATES = ("running", "paused", "stopping")


class ControlError(ValueError):
    """A request that cannot be made or was refused (bad input: the CLI exits 2)."""


def _run(session: Session) -> Run:
    run = run_row(session)
    if run is None:
        raise ControlError("the database holds no run yet")
    return run


def submit(store: Store, action: str, *, by: str, note: str = "", to: int | None = None) -> int:
    """Record a request; pause and resume take effect at once (they are a state), stops and moves wait for
    whoever acts on them. Returns the request's id."""
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
    if action == "promote" and to is None:
        raise ControlError("promote needs the policy to make current (a version)")
    if to is not None and action not in MOVES:
        raise ControlError(f"{action} takes no policy version")
    with store.session() as session:
        request = ControlRequest(run_id=_run(session).id, action=action, to_version=to, note=note,
                                 requested_by=by)
        if action in ("pause", "resume"):
            request.applied_at, request.outcome = utcnow(), "paused" if action == "pause" else "running"
        session.add(request)
        session.flush()
        return request.id


def _pending(session: Session, run_id: int, actions: tuple[str, ...]) -> list[ControlRequest]:
    return list(session.scalars(select(ControlRequest).where(
        ControlRequest.run_id == run_id, ControlRequest.action.in_(actions), ControlRequest.applied_at.is_(None))
        .order_by(ControlRequest.id)))


def run_state(session: Session, run_id: int) -> str:
    """running | paused | stopping: a pending stop wins; otherwise the latest pause or resume."""
    if _pending(session, run_id, ("stop",)):
        return "stopping"
    latest = session.scalar(select(ControlRequest.action).where(
        ControlRequest.run_id == run_id, ControlRequest.action.in_(("pause", "resume")))
        .order_by(ControlRequest.id.desc()).limit(1))
    return "paused" if latest == "pause" else "running"


def acknowledge_stop(session: Session, run_id: int) -> None:
    """The daemon has stopped as asked: pending stops are done, and the next start runs normally."""
    for request in _pending(session, run_id, ("stop",)):
        request.applied_at, request.outcome = utcnow(), "stopped"


def apply_moves(session: Session, run_id: int) -> list[ControlRequest]:
    """Apply the queued promotions and rollbacks in the order they were made (the caller holds the run's lease);
    a refused one records why and the rest still apply."""
    applied = []
    for request in _pending(session, run_id, MOVES):
        reason = request.note or f"{request.action} by {request.requested_by}"
        try:
            with session.begin_nested():
                if request.action == "promote":
                    move = promote(session, run_id, request.to_version, reason)
                else:
                    move = rollback(session, run_id, request.to_version, reason)
            request.outcome = f"current policy: v{move.from_version} → v{move.to_version} ({move.reason})"
        except RollbackError as exc:
            request.outcome = f"refused: {exc}"
        request.applied_at = utcnow()
        applied.append(request)
    return applied


def operate(store: Store, action: str, *, by: str, note: str = "", to: int | None = None) -> str:
    """What the CLI and the dashboard call: record the request and, for a move, apply it now if no live process
    holds the run (else it is queued for the holder). Returns one line saying what happened; a refused move
    raises ControlError with the reason (the refusal stays on record)."""
    request_id = submit(store, action, by=by, note=note, to=to)
    if action not in MOVES:
        return {"pause": "paused: the daemon finishes the stage it is in and waits",
                "resume": "resumed", "stop": "stop requested: the daemon stops after the stage it is in"}[action]
    with store.session() as session:
        run = _run(session)
        run_id, name = run.id, run.name
    try:
        lease = acquire(store, name)
    except LeaseHeld as exc:
        return f"{action} queued (request {request_id}): {exc.args[0].split('; ')[0]}; it applies after the " \
               "current iteration"
    with lease, store.session() as session:
        lease.fence(session)
        apply_moves(session, run_id)
    with store.session() as session:
        outcome = session.get(ControlRequest, request_id).outcome or ""
    if outcome.startswith("refused: "):
        raise ControlError(outcome.removeprefix("refused: "))
    return outcome
