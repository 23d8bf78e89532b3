"""The shared selects of `loop.store.queries` on a real SQLite store: a tiny run inserted through the models."""

from __future__ import annotations

import pytest

from loop.store import (
    Evaluation,
    GateDecision,
    Iteration,
    IterationInputs,
    Policy,
    Run,
    Sample,
    Store,
)
from loop.store.queries import (
    count,
    decision_of_iteration,
    evaluation_of_iteration,
    has_table,
    iteration_by_index,
    iteration_indexes,
    iteration_samples,
    latest_inputs,
    latest_iteration,
    policy,
    policy_of_iteration,
    run_name,
    run_policies,
    run_row,
    unresolved_halts,
)


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cai.db'}")
    yield store
    store.dispose()


def _sample(iteration: Iteration, prompt_id: str) -> Sample:
    return Sample(iteration_id=iteration.id, prompt_id=prompt_id, prompt_category="c", prompt=prompt_id,
                  policy_version=iteration.policy_version, constitution_hash="h")


def _checks(index: int, passed: bool) -> list[dict]:
    return [{"name": "harm", "passed": passed, "reason": f"check of {index}"}]


@pytest.fixture
def run(store):
    """Two iterations: the first trained v1 (evaluated twice, halted, the halt resolved), the second trained v2
    (halted, unresolved) and is resumed with changed inputs; the samples are added out of prompt order."""
    with store.session() as session:
        run = Run(name="tiny", config={})
        session.add(run)
        session.flush()
        session.add(Policy(run_id=run.id, version=0, parent_version=None, adapter_path=None))
        first = Iteration(run_id=run.id, index=1, policy_version=0, constitution_hash="h", status="done")
        second = Iteration(run_id=run.id, index=2, policy_version=1, constitution_hash="h")
        session.add_all([second, first])  # ids in the other order than indexes: the queries order by index
        session.flush()
        session.add_all([Policy(run_id=run.id, version=2, parent_version=1, adapter_path=None,
                                iteration_id=second.id),
                         Policy(run_id=run.id, version=1, parent_version=0, adapter_path="policies/v1",
                                iteration_id=first.id)])
        session.add_all([_sample(first, "b"), _sample(first, "a"), _sample(second, "c")])
        for previous in (0, 1):
            session.add(Evaluation(run_id=run.id, iteration_id=first.id, policy_version=1,
                                   previous_version=previous, refusal_classifier="lexical", wall_s=1.0))
        session.flush()
        session.add_all([GateDecision(run_id=run.id, iteration_id=first.id, candidate_version=1, current_version=0,
                                      outcome="halt", checks=_checks(1, False), resolved_at=first.started_at),
                         GateDecision(run_id=run.id, iteration_id=second.id, candidate_version=2,
                                      current_version=0, outcome="halt", checks=_checks(2, False))])
        for digest in ("old", "new"):
            session.add(IterationInputs(iteration_id=second.id, constitution_hash=digest, config_hash=digest,
                                        config={}))
        return run.id, first.id, second.id


def test_an_empty_store_answers_none(store):
    with store.session() as session:
        assert run_row(session) is None and run_name(session) is None
        assert latest_iteration(session) is None and iteration_by_index(session, 1) is None
        assert iteration_indexes(session) == [] and iteration_samples(session, 1) == []
        assert latest_inputs(session, 1) is None
        assert policy(session, 1, 0) is None and run_policies(session, 1) == []
        assert policy_of_iteration(session, 1) is None
        assert evaluation_of_iteration(session, 1) is None and decision_of_iteration(session, 1) is None
        assert unresolved_halts(session, 1) == []
        assert count(session, Sample) == 0
        assert has_table(session, "runs") and not has_table(session, "no_such_table")


def test_the_run_and_its_iterations(store, run):
    run_id, first, second = run
    with store.session() as session:
        assert run_row(session).id == run_id and run_name(session) == "tiny"
        assert latest_iteration(session).id == second
        assert iteration_by_index(session, 1).id == first and iteration_by_index(session, 3) is None
        assert iteration_indexes(session) == [1, 2]
        assert [s.prompt_id for s in iteration_samples(session, first)] == ["b", "a"]  # the order drawn
        assert latest_inputs(session, second).constitution_hash == "new"
        assert latest_inputs(session, first) is None
        assert count(session, Sample, Sample.iteration_id == first) == 2


def test_policies_evaluations_and_decisions(store, run):
    run_id, first, second = run
    with store.session() as session:
        assert policy(session, run_id, 1).adapter_path == "policies/v1"
        assert policy(session, run_id, 3) is None and policy(session, run_id + 1, 1) is None
        assert [p.version for p in run_policies(session, run_id)] == [0, 1, 2]
        assert policy_of_iteration(session, first).version == 1
        assert policy_of_iteration(session, second).version == 2
        assert evaluation_of_iteration(session, first).previous_version == 1  # the latest of the two
        assert evaluation_of_iteration(session, second) is None
        assert decision_of_iteration(session, first).resolved_at is not None
        assert [d.iteration_id for d in unresolved_halts(session, run_id)] == [second]
        assert unresolved_halts(session, run_id + 1) == []
