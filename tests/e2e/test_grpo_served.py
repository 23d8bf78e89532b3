"""GRPO whose rollouts come from the real vLLM server, serving the adapter being trained (slow): the trainer
alone, then a whole `cai iterate` with `train.trainer: grpo` on `generation.backend: vllm-server`.

Runs before test_vllm_server.py, whose last test stops the session's server.
"""

import json
import math
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from loop.cli import app
from loop.operate.promotion import evaluation_metrics
from loop.store import Evaluation
from loop.store.database import open_run_store
from policies.adapters import LoraSettings, attach_trainable_adapter
from policies.models import load_model
from policies.serving.vllm_client import VllmAdmin
from policies.training.grpo import GRPOTrainer
from policies.training.grpo_rewards import GRPOExample
from policies.training.rollouts import ServedRollouts
from policies.training.settings import GRPOSettings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_grpo_rollouts_are_served_from_the_current_adapter(vllm_served, smollm2_dir, tmp_path):
    lm, tokenizer = load_model(smollm2_dir, device="cpu")
    lm = attach_trainable_adapter(lm, LoraSettings(r=8, alpha=16))
    admin = VllmAdmin(vllm_served.url)
    served = ServedRollouts(vllm_served.url, lm, tmp_path / "rollout-adapters", prefix="grpo-test")
    seen = []

    def on_step(step):
        seen.append(sorted(name for name in admin.served() if name.startswith("grpo-test")))

    def shorter_is_better(examples, rollouts):
        return [(-len(r.completion_ids) / 10, {}) for r in rollouts]

    examples = [GRPOExample([{"role": "user", "content": f"Name a colour ({i})."}], "benign") for i in range(2)]
    settings = GRPOSettings(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=12, batch_size=4,
                            learning_rate=1e-3)
    steps = GRPOTrainer(lm, tokenizer, settings, shorter_is_better, served=served).fit(examples, on_step).steps

    # Each rollout batch came from the adapter saved just before it, and only that one was loaded.
    assert seen == [["grpo-test-step0"], ["grpo-test-step1"]]
    assert (tmp_path / "rollout-adapters" / "step-1" / "adapter_model.safetensors").is_file()
    assert not [name for name in admin.served() if name.startswith("grpo-test")]  # unloaded at the end
    assert all(math.isfinite(s.metrics[k]) for s in steps for k in ("reward_mean", "kl", "completion_length"))


def test_a_grpo_iteration_runs_through_the_server(vllm_served, tmp_path):
    config = yaml.safe_load(vllm_served.config.read_text())
    config["prompts"] = {"files": [str(ROOT / "data/tasks/arithmetic.jsonl")], "per_iteration": 2, "draw": "random"}
    config["rewards"] = {"components": [{"kind": "task", "weight": 1.0}]}
    config["train"] = {"trainer": "grpo", "lora": {"r": 4, "alpha": 8},
                       "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 16,
                                "batch_size": 4, "max_length": 192}}
    config["evaluation"]["sets"] = [
        {"name": "harmful", "file": str(ROOT / "data/eval/harmful.jsonl"), "role": "harmful"},
        {"name": "arithmetic", "file": str(ROOT / "data/tasks/arithmetic.heldout.jsonl"), "role": "task"}]
    path = tmp_path / "grpo-served.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["iterate", "--config", str(path), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output

    # The trainer sampled its rollouts from the server: the adapter it loaded there before its one step.
    training = run_dir / "training" / "iteration-1" / "grpo"
    assert (training / "rollout-adapters" / "step-0" / "adapter_model.safetensors").is_file()
    assert json.loads((training / "spec.json").read_text())["rollout_server"] == vllm_served.url
    assert not [name for name in VllmAdmin(vllm_served.url).served() if name.startswith("grpo-")]
    store = open_run_store(run_dir, write=True)
    with store.session() as session:
        metrics = evaluation_metrics(session, session.scalar(select(Evaluation.id)))
    store.dispose()
    assert 0.0 <= metrics["task_accuracy"] <= 1.0 and 0.0 <= metrics["base_task_accuracy"] <= 1.0
