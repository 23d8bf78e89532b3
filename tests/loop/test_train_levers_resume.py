"""The train stage's levers survive an interruption, on the tiny model with real trainer children: a re-run of a
killed train stage replays the same pairs and records them once, and a warm start whose trainer is killed with
SIGKILL runs again and the iteration ends with one new policy."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.config import RunConfig, resolve_paths
from loop.config.training import BudgetSettings, ReplaySettings, WarmStartSettings
from loop.pipeline.iteration import run_iteration
from loop.pipeline.stages import STAGES
from loop.pipeline.stages import train as train_stage
from loop.store import Metric, Pair, Policy, Replay, RewardScore, Sample, SampledAnswer
from loop.store.database import open_run_store
from policies.training.launcher import TrainingFailed
from tests.e2e.test_kill_resume import wait_for_trainer
from tests.loop.runs import ROOT, tiny_config


def config_with(tiny_model_dir, cai_home, **train) -> RunConfig:
    """The tiny run config with train levers set past validation (the warm start's sampled pair source is
    another change's; these tests give it its sampled answers directly)."""
    config = resolve_paths(RunConfig(**tiny_config(tiny_model_dir, cai_home)), ROOT)
    return config.model_copy(update={"train": config.train.model_copy(update=train)})


def rows(run_dir: Path, model) -> list:
    store = open_run_store(run_dir, write=False)
    try:
        with store.session() as session:
            return list(session.scalars(select(model).order_by(model.id)))
    finally:
        store.dispose()


def test_a_rerun_of_a_killed_train_stage_replays_the_same_pairs_once(tiny_model_dir, cai_home, tmp_path,
                                                                     monkeypatch):
    config = config_with(tiny_model_dir, cai_home, replay=ReplaySettings(max_pairs=2),
                         budget=BudgetSettings(max_pairs=4))
    run_iteration(config, tmp_path)
    picks = []
    real_replay = train_stage.replay_pairs

    def recorded(*args, **kwargs):
        picked = real_replay(*args, **kwargs)
        picks.append([p.pair.id for p in picked])
        return picked

    def killed(*args, **kwargs):
        raise TrainingFailed("preference training was killed by signal 9", [])

    monkeypatch.setattr(train_stage, "replay_pairs", recorded)
    monkeypatch.setattr("policies.training.launcher.launch", killed)
    with pytest.raises(TrainingFailed):
        run_iteration(config, tmp_path)
    assert rows(tmp_path, Replay) == []  # written only with the stage's completion
    monkeypatch.undo()
    monkeypatch.setattr(train_stage, "replay_pairs", recorded)
    run_iteration(config, tmp_path)

    first_pairs = {p.id for p in rows(tmp_path, Pair) if p.iteration_id == rows(tmp_path, Policy)[1].iteration_id}
    assert picks[0] == picks[1] and len(picks[0]) == 2 and set(picks[0]) <= first_pairs
    # 3 fresh pairs and 2 replays, capped at 4: the fresh ones first, so one replay is trained and recorded.
    replays = rows(tmp_path, Replay)
    assert len(replays) == 1 and replays[0].pair_id in picks[0]
    metrics = {m.name: m.value for m in rows(tmp_path, Metric) if m.iteration_id == replays[0].iteration_id
               and m.stage == "train" and m.step is None}
    assert (metrics["replayed_pairs"], metrics["trained_pairs"]) == (1, 4)
    assert rows(tmp_path, Policy)[-1].pairs == 4


def add_checked_answers(ctx) -> None:
    """Two scored answers per sample of the iteration, the better passing its one check."""
    with ctx.store.session() as session:
        for sample in session.scalars(select(Sample).where(Sample.iteration_id == ctx.iteration_id)):
            for index, (reward, check) in enumerate([(0.2, 0.0), (0.8, 1.0)]):
                answer = SampledAnswer(sample_id=sample.id, index=index, steering="plain", principle_id=None,
                                       text=f"I will not help with that ({index}).", reward=reward)
                session.add(answer)
                session.flush()
                session.add(RewardScore(answer_id=answer.id, kind="checks", name="refuses", value=check, weight=1.0))


def test_a_warm_start_killed_by_sigkill_runs_again_and_the_iteration_ends_with_one_policy(
        tiny_model_dir, cai_home, tmp_path, monkeypatch):
    config = config_with(tiny_model_dir, cai_home, warm_start=WarmStartSettings(iterations=1, epochs=2))
    real_pairs = STAGES["pairs"].run

    def pairs_then_answers(ctx):
        real_pairs(ctx)
        add_checked_answers(ctx)

    monkeypatch.setitem(STAGES, "pairs", replace(STAGES["pairs"], run=pairs_then_answers))
    killed = []

    def kill_the_warm_start() -> None:
        # The iteration runs in this process, so its trainers are this process's children; the warm start's is first.
        pid = wait_for_trainer(tmp_path, 1, os.getpid())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_warm_start, daemon=True)
    killer.start()
    with pytest.raises(TrainingFailed, match="sft training was killed by signal 9"):
        run_iteration(config, tmp_path)
    killer.join()
    assert killed and rows(tmp_path, Policy)[-1].version == 0

    summary = run_iteration(config, tmp_path)
    assert summary["policy_version"] == "v1"
    assert [p.version for p in rows(tmp_path, Policy)] == [0, 1]
    warm = {m.name: m.value for m in rows(tmp_path, Metric) if m.stage == "warm_start" and m.step is None}
    assert warm["warm_start_examples"] == 3 and warm["sft_optimizer_steps"] > 0
    data = (tmp_path / "training/iteration-1/warm_start/data.jsonl").read_text()
    assert data.count("(1).") == 3 and "(0)." not in data  # each sample's best, checked answer
