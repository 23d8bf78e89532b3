"""What the train stage trains on, read from a real SQLite store with rows inserted through the models: replayed
pairs (cap, de-duplication, order, window), the pair budget, and the warm start's checked answers."""

from __future__ import annotations

import pytest

from critique.sampler import pair_key
from loop.config.training import ReplaySettings
from loop.pipeline.stages.train_data import (
    TrainPair,
    checked_answers,
    iteration_pairs,
    replay_pairs,
    within_budget,
)
from loop.store import Iteration, Pair, RewardScore, Run, Sample, SampledAnswer, Store


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cai.db'}")
    yield store
    store.dispose()


def add_iteration(session, run_id: int, index: int, pairs: list[tuple[str, str, str]],
                  principle: str = "harm", target: float = 0.9) -> int:
    """An iteration with one sample per pair (prompt, chosen, rejected); its id."""
    iteration = Iteration(run_id=run_id, index=index, policy_version=0, constitution_hash="h", status="done")
    session.add(iteration)
    session.flush()
    for n, (prompt, chosen, rejected) in enumerate(pairs):
        sample = Sample(iteration_id=iteration.id, prompt_id=f"{index}-{n}", prompt_category="harmful",
                        prompt=prompt, policy_version=0, constitution_hash="h")
        session.add(sample)
        session.flush()
        session.add(Pair(iteration_id=iteration.id, sample_id=sample.id, chosen=chosen, rejected=rejected,
                         chosen_is_revision=True, target=target, principle_id=principle,
                         key=pair_key(prompt, chosen, rejected)))
    session.flush()
    return iteration.id


@pytest.fixture
def run(store):
    """Three finished iterations of two pairs each; the third repeats a pair of the second (other case and
    spacing) and one of the fourth, the current iteration."""
    with store.session() as session:
        run = Run(name="tiny", config={})
        session.add(run)
        session.flush()
        add_iteration(session, run.id, 1, [("p1", "c1", "r1"), ("p2", "c2", "r2")])
        add_iteration(session, run.id, 2, [("p3", "c3", "r3"), ("p4", "c4", "r4")])
        add_iteration(session, run.id, 3, [("P3", "c3 ", "R3"), ("p5", "c5", "r5")])
        current = add_iteration(session, run.id, 4, [("p5", "c5", "r5"), ("p6", "c6", "r6")])
        return run.id, current


def prompts(pairs: list[TrainPair]) -> list[str]:
    return [p.prompt for p in pairs]


def test_replay_takes_the_most_recent_iterations_first_without_repeats(store, run):
    run_id, current = run
    with store.session() as session:
        fresh = iteration_pairs(session, current)
        picked = replay_pairs(session, run_id, 4, fresh, ReplaySettings(max_pairs=10))
    # Iteration 3's p5 repeats the current iteration; iteration 2's p3 repeats iteration 3's P3.
    assert prompts(picked) == ["P3", "p4", "p1", "p2"]
    assert all(p.replayed for p in picked) and not any(p.replayed for p in fresh)


def test_replay_keeps_its_cap_and_window(store, run):
    run_id, current = run
    with store.session() as session:
        fresh = iteration_pairs(session, current)
        assert prompts(replay_pairs(session, run_id, 4, fresh, ReplaySettings(max_pairs=2))) == ["P3", "p4"]
        assert prompts(replay_pairs(session, run_id, 4, fresh, ReplaySettings(max_pairs=10, from_iterations=1))) \
            == ["P3"]
        assert replay_pairs(session, run_id, 4, fresh, ReplaySettings()) == []
        # Nothing earlier than the first iteration.
        assert replay_pairs(session, run_id, 1, [], ReplaySettings(max_pairs=10)) == []


def test_replay_picks_the_same_pairs_every_time(store, run):
    run_id, current = run
    with store.session() as session:
        fresh = iteration_pairs(session, current)
        first = [p.pair.id for p in replay_pairs(session, run_id, 4, fresh, ReplaySettings(max_pairs=3))]
    with store.session() as session:
        again = [p.pair.id for p in replay_pairs(session, run_id, 4, iteration_pairs(session, current),
                                                 ReplaySettings(max_pairs=3))]
    assert first == again and len(set(first)) == 3


def test_the_budget_takes_this_iteration_first_then_replays_round_robin(store):
    with store.session() as session:
        run = Run(name="tiny", config={})
        session.add(run)
        session.flush()
        old = add_iteration(session, run.id, 1, [("a", "x", "y"), ("b", "x", "y")], principle="harm")
        older_help = add_iteration(session, run.id, 2, [("c", "x", "y")], principle="help", target=0.6)
        current = add_iteration(session, run.id, 3, [("d", "x", "y"), ("e", "x", "y"), ("f", "x", "y")])
        fresh = iteration_pairs(session, current)
        replays = [TrainPair(p.pair, p.prompt, replayed=True)
                   for i in (older_help, old) for p in iteration_pairs(session, i)]
    assert within_budget(fresh + replays, None) == fresh + replays
    assert prompts(within_budget(fresh + replays, 2)) == ["d", "e"]
    # One of each principle before a second of either: harm's a (its more confident) and help's c, not b.
    assert prompts(within_budget(fresh + replays, 5)) == ["d", "e", "f", "c", "a"]
    assert prompts(within_budget(fresh + replays, 6)) == ["d", "e", "f", "c", "a", "b"]


def test_the_budget_stratifies_across_principles():
    def pair(n: int, principle: str, target: float) -> TrainPair:
        return TrainPair(Pair(id=n, chosen="c", rejected="r", target=target, principle_id=principle,
                              chosen_is_revision=True, iteration_id=1), f"p{n}")

    pairs = [pair(1, "harm", 0.6), pair(2, "harm", 0.9), pair(3, "harm", 0.8), pair(4, "help", 0.7)]
    # Most confident harm pair (2) and the help pair, kept in their order.
    assert [p.pair.id for p in within_budget(pairs, 2)] == [2, 4]


def add_answers(session, sample_id: int, answers: list[tuple[float | None, list[float | None]]]) -> None:
    """Sampled answers (reward, values of their "checks" components), each also with a judge component."""
    for index, (reward, checks) in enumerate(answers):
        answer = SampledAnswer(sample_id=sample_id, index=index, steering="plain", principle_id="harm",
                               text=f"answer {index} of {sample_id}", reward=reward)
        session.add(answer)
        session.flush()
        session.add(RewardScore(answer_id=answer.id, kind="judge", name="pointwise", value=0.0, weight=1.0))
        session.add_all([RewardScore(answer_id=answer.id, kind="checks", name=f"check-{n}", value=v, weight=1.0)
                         for n, v in enumerate(checks)])


def test_the_warm_start_takes_each_samples_best_answer_when_it_passes_every_check(store):
    with store.session() as session:
        run = Run(name="tiny", config={})
        session.add(run)
        session.flush()
        iteration = add_iteration(session, run.id, 1, [(f"q{n}", "c", "r") for n in range(7)])
        other = add_iteration(session, run.id, 2, [("elsewhere", "c", "r")])
        samples = {s.prompt: s.id for s in session.query(Sample)}
        add_answers(session, samples["q0"], [(0.2, [1.0]), (0.9, [1.0, 1.0]), (0.5, [1.0])])  # best passes
        add_answers(session, samples["q1"], [(0.9, [1.0, 0.0]), (0.5, [1.0])])  # best fails a check: none
        add_answers(session, samples["q2"], [(0.7, [])])  # no check scored it: does not qualify
        add_answers(session, samples["q3"], [(0.7, [None, 1.0])])  # a check could not score it: no
        add_answers(session, samples["q4"], [(None, [1.0]), (0.1, [1.0])])  # unscored answers are not best
        add_answers(session, samples["q5"], [(0.4, [1.0]), (0.4, [1.0])])  # a tie: the lower index
        # q6 has no sampled answers at all.
        add_answers(session, samples["elsewhere"], [(1.0, [1.0])])  # another iteration's
        session.flush()
        assert checked_answers(session, iteration) == [
            ("q0", f"answer 1 of {samples['q0']}"), ("q4", f"answer 1 of {samples['q4']}"),
            ("q5", f"answer 0 of {samples['q5']}")]
        assert checked_answers(session, other) == [("elsewhere", f"answer 0 of {samples['elsewhere']}")]
