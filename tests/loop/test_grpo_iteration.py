"""`train.trainer: grpo` in the loop (tiny model): an iteration is rollouts + training + evaluation. The pair
stages record themselves done without work, the train stage hands GRPO the iteration's prompts with their tasks,
its per-step metrics are stored, and the evaluation measures task accuracy for the candidate, the previous policy
and the base. Also: the shipped configs/grpo.yaml validates."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from loop.config import RunConfig, load_run_config, resolve_paths
from loop.evaluation.gates import GATES
from loop.pipeline.iteration import run_iteration
from loop.pipeline.names import StageName
from loop.store import Comparison, Critique, EvalComparison, EvalResponse, Metric, Pair, Policy, Sample
from loop.store.database import open_run_store

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_grpo_config_validates():
    config = load_run_config(ROOT / "configs/grpo.yaml")
    assert config.train.trainer == "grpo" and config.train.used_sections() == ["grpo"]
    assert {c.kind for c in config.rewards.components} == {"task", "checks"}
    roles = {s.name: s.role for s in config.evaluation.sets}
    assert roles == {"harmful": "harmful", "benign_risky": "benign_risky", "helpful": "helpful",
                     "arithmetic": "task", "format": "task"}
    assert all(s.file.is_file() for s in config.evaluation.sets)
    assert all(f.is_file() for f in config.prompts.files)
    assert config.gates.max_task_accuracy_drop is not None


def pool(folder: Path) -> Path:
    """Two arithmetic prompts, one format prompt and one harmful request (no task)."""
    lines = (ROOT / "data/tasks/arithmetic.jsonl").read_text().splitlines()[:2]
    lines += (ROOT / "data/tasks/format.jsonl").read_text().splitlines()[:1]
    lines += (ROOT / "data/prompts/harmful.jsonl").read_text().splitlines()[:1]
    path = folder / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def grpo_config(model_dir: Path, home: Path, folder: Path) -> RunConfig:
    raw = RunConfig(
        home=home, seed=0, threads=2,
        model={"name": str(model_dir), "device": "cpu"},
        prompts={"files": [pool(folder)], "per_iteration": 4},
        rewards={"components": [{"kind": "task", "weight": 1.0}, {"kind": "checks", "weight": 0.5}]},
        train={"trainer": "grpo", "lora": {"r": 4, "alpha": 8},
               "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "batch_size": 4,
                        "max_length": 128, "learning_rate": 1e-2}},
        evaluation={"per_set": 2, "max_new_tokens": 5, "refusal": {"classifier": "lexical"}, "sets": [
            {"name": "harmful", "file": ROOT / "data/eval/harmful.jsonl", "role": "harmful"},
            {"name": "arithmetic", "file": ROOT / "data/tasks/arithmetic.heldout.jsonl", "role": "task",
             "max_new_tokens": 8}]},
        gates={g.setting: None for g in GATES} | {"max_task_accuracy_drop": 0.5},
    )
    return resolve_paths(raw, ROOT)


def rows(run_dir: Path, query) -> list:
    store = open_run_store(run_dir, write=True)
    with store.session() as session:
        found = list(session.scalars(query))
    store.dispose()
    return found


def test_a_grpo_iteration_trains_on_rollouts_and_measures_task_accuracy(tiny_model_dir, cai_home, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_iteration(grpo_config(tiny_model_dir, cai_home, tmp_path), run_dir)
    assert list(summary["wall_s"]) == [stage.value for stage in StageName]  # every stage recorded done
    assert summary["trainer"] == "grpo" and summary["policy_version"] == "v1"
    # the pair stages did nothing: no answers, critiques, verdicts or pairs
    assert [s.response for s in rows(run_dir, select(Sample))] == [None] * 4
    for table in (Critique, Comparison, Pair):
        assert rows(run_dir, select(table)) == []
    (policy,) = rows(run_dir, select(Policy).where(Policy.version == 1))
    assert (policy.trainer, policy.pairs) == ("grpo", 0)
    assert (run_dir / "policies/v1/adapter_config.json").is_file()

    records = [json.loads(line) for line in
               (run_dir / "training/iteration-1/grpo/data.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["principle"] is None and len(r["prompt"]) == 1 for r in records)
    by_category = sorted((r["category"], r["task"] is not None) for r in records)
    assert by_category == [("benign", True)] * 3 + [("harmful", False)]
    assert summary["train"]["trained_prompts"] == 4
    steps = rows(run_dir, select(Metric).where(Metric.stage == "train", Metric.step.is_not(None)))
    names = {m.name for m in steps}
    assert {m.step for m in steps} == {1, 2} and {"loss", "kl", "reward_mean", "truncated"} <= names
    assert any(n.startswith("task/") for n in names) and any(n.startswith("checks/") for n in names)
    assert "grpo_reward_mean_last" in summary["train"]

    metrics = summary["evaluation"]["metrics"]
    for prefix in ("", "previous_", "base_"):
        for name in ("task_accuracy", "task_accuracy_arithmetic"):
            assert 0.0 <= metrics[prefix + name] <= 1.0, prefix + name
    assert metrics["task_accuracy_drop"] == metrics["previous_task_accuracy"] - metrics["task_accuracy"]
    assert "task_accuracy" in {c["gate"] for c in summary["gate"]["checks"]}
    answers = rows(run_dir, select(EvalResponse).where(EvalResponse.policy_version == 1))
    keys = {r.eval_set: r.settings_key for r in answers}
    assert keys["arithmetic"] != keys["harmful"]  # its own answer limit, its own key
    assert max(r.tokens for r in answers if r.eval_set == "arithmetic") <= 8
    judged = {c.candidate_id for c in rows(run_dir, select(EvalComparison))}
    assert {r.eval_set for r in answers if r.id in judged} == {"harmful"}  # task answers are checked, not judged
