"""Fault injection: a stage that dies leaves nothing half-written, and a re-run redoes only what is missing."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.config import RunConfig, resolve_paths
from loop.evaluation.gates import GATES
from loop.pipeline.iteration import run_iteration
from loop.pipeline.stages import STAGES
from loop.store import Comparison, Critique, Iteration, Pair, Policy, Run, Sample, StageRun
from loop.store.database import open_run_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tiny_model_dir, cai_home) -> RunConfig:
    raw = RunConfig(
        home=cai_home, seed=0, threads=2,
        model={"name": str(tiny_model_dir), "device": "cpu"},
        prompts={"files": [ROOT / "data/prompts/harmful.jsonl", ROOT / "data/prompts/borderline.jsonl"],
                 "per_iteration": 3},
        generation={"max_new_tokens": 6}, critique={"max_new_tokens": 6, "rounds": 2},
        judge={"margin": 0.0, "min_label_prob": 1e-12},  # a random tiny model puts ~1e-5 on any token
        # Every pair kept: these tests are about resuming, not about which pairs are sampled.
        pairs={"sampler": {"length_tolerance": None}},
        train={"preference": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-2}, "lora": {"r": 4, "alpha": 8}},
        # A small evaluation, and gates that let any candidate through: these tests are about resuming.
        evaluation={"per_set": 2, "max_new_tokens": 4, "refusal": {"classifier": "lexical"}},
        gates={g.setting: None for g in GATES},
    )
    return resolve_paths(raw, ROOT)


def snapshot(run_dir: Path) -> dict:
    store = open_run_store(run_dir, write=True)
    with store.session() as s:
        state = {
            "responses": [x.response for x in s.scalars(select(Sample).order_by(Sample.id))],
            "critiques": [(c.sample_id, c.round, c.critique) for c in s.scalars(select(Critique))],
            "comparisons": [(c.sample_id, c.p_b) for c in s.scalars(select(Comparison))],
            "pairs": s.query(Pair).count(),
            "stages": sorted(r.stage for r in s.scalars(select(StageRun))),
            "policies": sorted(p.version for p in s.scalars(select(Policy))),
        }
    store.dispose()
    return state


def test_crash_in_training_then_resume_redoes_only_training(config, tmp_path, monkeypatch):
    real_train = STAGES["train"]

    def crash(ctx):
        raise RuntimeError("injected crash in train")

    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=crash))
    with pytest.raises(RuntimeError, match="injected"):
        run_iteration(config, tmp_path)
    before = snapshot(tmp_path)
    assert before["stages"] == ["critique", "generate", "judge", "pairs"]
    assert len(before["critiques"]) == 3 * 2  # 3 samples x 2 rounds
    assert before["policies"] == [0]

    generations = []
    monkeypatch.setitem(STAGES, "train", real_train)
    monkeypatch.setitem(STAGES, "generate", replace(STAGES["generate"], run=lambda ctx: generations.append(ctx)))
    summary = run_iteration(config, tmp_path)
    after = snapshot(tmp_path)
    assert generations == []  # finished stages were not re-run
    assert {k: after[k] for k in ("responses", "critiques", "comparisons", "pairs")} == \
        {k: before[k] for k in ("responses", "critiques", "comparisons", "pairs")}
    assert after["policies"] == [0, 1]
    assert summary["iteration"] == 1 and summary["policy_version"] == "v1"
    assert (summary["samples"], summary["critiques"], summary["comparisons"], summary["pairs"]) == (3, 6, 3, 3)
    assert summary["answers_generated"] == 3 and summary["judge"]["suspect"] is not None
    json.dumps(summary)  # `cai status --json` prints exactly this


def test_next_iteration_generates_with_the_promoted_policy(config, tmp_path):
    run_iteration(config, tmp_path)
    summary = run_iteration(config, tmp_path)
    assert (summary["iteration"], summary["policy_in"], summary["policy_version"]) == (2, "v1", "v2")
    store = open_run_store(tmp_path, write=True)
    with store.session() as s:
        assert s.scalar(select(Run.current_policy)) == 2
        v2 = s.scalar(select(Policy).where(Policy.version == 2))
        assert v2.parent_version == 1 and (tmp_path / v2.adapter_path / "adapter_model.safetensors").is_file()
        assert [i.policy_version for i in s.scalars(select(Iteration).order_by(Iteration.index))] == [0, 1]
    store.dispose()


def test_no_confident_pairs_means_no_new_policy(config, tmp_path):
    strict = config.model_copy(update={"judge": config.judge.model_copy(update={"margin": 0.4999})})
    summary = run_iteration(strict, tmp_path)
    assert summary["pairs"] == 0 and summary["policy_version"] is None and summary["status"] == "done"


def test_ppo_iteration_with_sft_on_revisions(config, tmp_path):
    train = config.train.model_copy(update={
        "trainer": "ppo", "sft_on_revisions": True,
        "sft": config.train.sft.model_copy(update={"max_length": 96, "batch_size": 2}),
        "reward_model": config.train.reward_model.model_copy(update={"max_length": 96, "batch_size": 2}),
        "ppo": config.train.ppo.model_copy(update={"rollouts": 2, "rollout_batch_size": 3, "max_new_tokens": 6,
                                                    "batch_size": 3, "max_length": 96}),
    })
    summary = run_iteration(config.model_copy(update={"train": train}), tmp_path)
    assert summary["trainer"] == "ppo" and summary["policy_version"] == "v1"
    assert {"sft_loss_before", "sft_loss_after"} <= set(summary["sft"])
    # (correlations over a single held-out pair are undefined and not stored)
    assert {"rm_accuracy", "rm_ece", "rm_judge_mae", "rm_pairs"} <= set(summary["reward_model"])
    assert {"ppo_reward_mean_first", "ppo_kl_last", "ppo_entropy_last"} <= set(summary["train"])
    assert (tmp_path / "policies" / "v1" / "adapter_model.safetensors").is_file()
    # the reward-hacking signal: the reward model's preference for the candidate against the judge's
    metrics = summary["evaluation"]["metrics"]
    assert metrics["reward_judge_divergence"] == pytest.approx(
        metrics["reward_model_win_rate_vs_previous"] - metrics["win_rate_vs_previous"])
