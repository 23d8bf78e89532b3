"""The selects more than one room asks, named once: each takes an open `Session` and returns rows or None.

A database holds one run (`run_row`); a query asked in one place only stays beside its caller.
"""

from __future__ import annotations

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from loop.store.models import Evaluation, GateDecision, Iteration, IterationInputs, Policy, Run, Sample


def count(session: Session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def has_table(session: Session, name: str) -> bool:
    """Tables added after a run was made (operator control, constitution versions) are absent in older runs."""
    return inspect(session.get_bind()).has_table(name)


def has_column(session: Session, table: str, column: str) -> bool:
    """Columns added after a run was made are absent in an older run read without migrating it (`cai status`)."""
    return column in {c["name"] for c in inspect(session.get_bind()).get_columns(table)}


def run_row(session: Session) -> Run | None:
    """The database's run (None before the first iteration made it)."""
    return session.scalar(select(Run).order_by(Run.id))


def run_name(session: Session) -> str | None:
    return session.scalar(select(Run.name).order_by(Run.id))


def latest_iteration(session: Session) -> Iteration | None:
    return session.scalars(select(Iteration).order_by(Iteration.index.desc())).first()


def iteration_by_index(session: Session, index: int) -> Iteration | None:
    return session.scalars(select(Iteration).where(Iteration.index == index)).first()


def iteration_indexes(session: Session) -> list[int]:
    return list(session.scalars(select(Iteration.index).order_by(Iteration.index)))


def iteration_samples(session: Session, iteration_id: int) -> list[Sample]:
    """The iteration's samples in the order they were drawn (the order shards slice them in)."""
    return list(session.scalars(select(Sample).where(Sample.iteration_id == iteration_id).order_by(Sample.id)))


def latest_inputs(session: Session, iteration_id: int) -> IterationInputs | None:
    """The inputs the iteration last ran with (a resume with `--allow-changed` adds a row)."""
    return session.scalars(select(IterationInputs).where(IterationInputs.iteration_id == iteration_id)
                           .order_by(IterationInputs.id.desc())).first()


def policy(session: Session, run_id: int, version: int) -> Policy | None:
    return session.scalar(select(Policy).where(Policy.run_id == run_id, Policy.version == version))


def run_policies(session: Session, run_id: int) -> list[Policy]:
    return list(session.scalars(select(Policy).where(Policy.run_id == run_id).order_by(Policy.version)))


def policy_of_iteration(session: Session, iteration_id: int) -> Policy | None:
    """The candidate the iteration trained (None until its train stage is done, or when it trained none)."""
    return session.scalar(select(Policy).where(Policy.iteration_id == iteration_id))


def evaluation_of_iteration(session: Session, iteration_id: int) -> Evaluation | None:
    """The iteration's latest evaluation of its candidate."""
    return session.scalar(select(Evaluation).where(Evaluation.iteration_id == iteration_id)
                          .order_by(Evaluation.id.desc()))


def decision_of_iteration(session: Session, iteration_id: int) -> GateDecision | None:
    return session.scalar(select(GateDecision).where(GateDecision.iteration_id == iteration_id))


def unresolved_halts(session: Session, run_id: int) -> list[GateDecision]:
    """The halts no operator has acted on yet (`cai rollback` or `cai promote` resolve them)."""
    return list(session.scalars(select(GateDecision).where(
        GateDecision.run_id == run_id, GateDecision.outcome == "halt", GateDecision.resolved_at.is_(None))
        .order_by(GateDecision.id)))
