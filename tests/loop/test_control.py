"""Operator requests on SQLite and PostgreSQL: pause/resume state, one-shot stops, policy moves applied at once
when the run is free and queued for the lease holder when it is not, refusals recorded."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from loop.operate.control import ControlError, acknowledge_stop, apply_moves, operate, run_state, submit
from loop.store import ControlRequest, GateDecision, Iteration, Policy, PolicyMove, Run
from loop.store.lease import acquire


@pytest.fixture
def run(store):
    """A run whose v2 was trained from v1 from the base; v2 is current and a halt is unresolved."""
    with store.session() as session:
        run = Run(name="r", config={}, current_policy=2)
        session.add(run)
        session.flush()
        iteration = Iteration(run_id=run.id, index=3, policy_version=2, constitution_hash="h")
        session.add(iteration)
        session.flush()
        session.add_all([Policy(run_id=run.id, version=0, parent_version=None, adapter_path=None),
                         Policy(run_id=run.id, version=1, parent_version=0, adapter_path="p/v1"),
                         Policy(run_id=run.id, version=2, parent_version=1, adapter_path="p/v2"),
                         GateDecision(run_id=run.id, iteration_id=iteration.id, current_version=2, outcome="halt",
                                      checks=[])])
    return store


def _state(store) -> str:
    with store.session() as session:
        return run_state(session, session.scalar(select(Run.id)))


def _current(store) -> int:
    with store.session() as session:
        return session.scalar(select(Run.current_policy))


def test_pause_persists_and_a_stop_is_pending_until_acknowledged(run):
    assert _state(run) == "running"
    assert operate(run, "pause", by="ops").startswith("paused")
    assert _state(run) == "paused"
    operate(run, "stop", by="ops")
    assert _state(run) == "stopping"
    with run.session() as session:
        acknowledge_stop(session, session.scalar(select(Run.id)))
    assert _state(run) == "paused"  # a restarted daemon stays paused
    operate(run, "resume", by="ops", note="fixed the principle file")
    assert _state(run) == "running"
    with run.session() as session:
        rows = session.scalars(select(ControlRequest).order_by(ControlRequest.id)).all()
    assert [(r.action, r.requested_by, r.outcome) for r in rows] == [
        ("pause", "ops", "paused"), ("stop", "ops", "stopped"), ("resume", "ops", "running")]
    assert all(r.applied_at is not None for r in rows) and rows[2].note == "fixed the principle file"


def test_a_move_on_a_free_run_applies_at_once_and_resolves_the_halt(run):
    assert operate(run, "rollback", by="ops", note="v2 answers worse") == \
        "current policy: v2 → v1 (v2 answers worse)"
    assert _current(run) == 1
    assert operate(run, "promote", by="ops", to=2) == "current policy: v1 → v2 (promote by ops)"
    with run.session() as session:
        moves = session.scalars(select(PolicyMove).order_by(PolicyMove.id)).all()
        assert [(m.from_version, m.to_version, m.kind) for m in moves] == [(2, 1, "rollback"), (1, 2, "promote")]
        assert session.scalar(select(GateDecision)).resolved_at is not None


def test_a_refused_move_is_recorded_and_raised(run):
    with pytest.raises(ControlError, match=r"no policy v9 in this run \(it has v0, v1, v2\)"):
        operate(run, "promote", by="ops", to=9)
    with run.session() as session:
        assert session.scalar(select(ControlRequest.outcome)).startswith("refused: no policy v9")
    assert _current(run) == 2


def test_a_move_while_the_run_is_held_waits_for_the_holder(run):
    with acquire(run, "r") as lease:
        text = operate(run, "rollback", by="ops")
        assert text.startswith("rollback queued (request 1): run 'r' is in use by pid")
        assert _current(run) == 2
        submit(run, "promote", by="ops", to=7)
        submit(run, "rollback", by="ops", to=0)
        with run.session() as session:
            lease.fence(session)
            applied = apply_moves(session, session.scalar(select(Run.id)))
        assert [r.outcome.split(" (")[0] for r in applied] == [
            "current policy: v2 → v1", "refused: no policy v7 in this run", "current policy: v1 → v0"]
    assert _current(run) == 0
    with run.session() as session:
        assert apply_moves(session, session.scalar(select(Run.id))) == []  # each request applies once


@pytest.mark.parametrize("action, to, message", [
    ("restart", None, "unknown action 'restart'"), ("promote", None, "promote needs the policy"),
    ("pause", 1, "pause takes no policy version")])
def test_malformed_requests_are_refused(run, action, to, message):
    with pytest.raises(ControlError, match=message):
        submit(run, action, by="ops", to=to)


def test_cli_commands_record_who_and_why(tmp_path):
    from typer.testing import CliRunner

    from loop.cli import app
    from loop.store import Store

    store = Store(f"sqlite:///{tmp_path / 'cai.db'}")
    with store.session() as session:
        session.add(Run(name=tmp_path.name, config={}))
    store.dispose()
    runner = CliRunner()
    paused = runner.invoke(app, ["pause", "--run-dir", str(tmp_path), "--by", "ops", "--note", "judge drift"])
    assert paused.exit_code == 0 and "paused" in paused.output
    refused = runner.invoke(app, ["promote", "v3", "--run-dir", str(tmp_path)])
    assert refused.exit_code == 2 and "no policy v3 in this run" in refused.output
    store = Store(f"sqlite:///{tmp_path / 'cai.db'}")
    with store.session() as session:
        assert [(r.action, r.requested_by, r.note) for r in session.scalars(select(ControlRequest))][0] == \
            ("pause", "ops", "judge drift")
        assert run_state(session, session.scalar(select(Run.id))) == "paused"
    store.dispose()
