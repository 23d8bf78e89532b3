"""The one entry point of every trainer: `python -m policies.training SPEC.json`.

The same command runs single-process on a CPU, or under `torchrun --nproc_per_node N -m policies.training SPEC.json`
(or the `deepspeed` launcher) with a ZeRO config on GPUs. It reads its data from files named in the spec,
writes the adapter to `output_dir/adapter` and `output_dir/result.json`, and prints progress lines
(`CAI_PROGRESS {...}`) that the launching process turns into progress bars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from policies.adapters import attach_trainable_adapter, save_adapter
from policies.files import atomic_write_text
from policies.models import load_model
from policies.runtime import configure_threads, quiet_model_libraries
from policies.training.data import PreferenceExample, collate_sequences
from policies.training.distributed import World, current_world, deepspeed_engine
from policies.training.optimization import StepLog, emit_progress
from policies.training.ppo import PolicyWithValue, PPOTrainer, Rollout, ServedRollouts
from policies.training.preference import PreferenceTrainer
from policies.training.reward_model import RewardModel, RewardModelTrainer, reward_eval_metrics
from policies.training.sft import SFTExample, SFTTrainer
from policies.training.spec import TrainSpec, read_jsonl

log = logging.getLogger(__name__)

def _progress(kind: str):
    def on_step(step: StepLog) -> None:
        emit_progress("step", {"trainer": kind, "step": step.step, "tokens_per_s": step.tokens_per_s, **step.metrics})
    return on_step


def run(spec: TrainSpec, world: World | None = None) -> dict[str, Any]:
    world = world or current_world()
    configure_threads(spec.threads)
    quiet_model_libraries()
    settings = getattr(spec, spec.kind)
    torch.manual_seed(settings.seed)  # fixes the fresh adapter's random init (and the value or reward head)
    records = read_jsonl(spec.data)
    lm, tokenizer = load_model(spec.model_dir, dtype=spec.dtype, device=spec.device)
    lm = attach_trainable_adapter(lm, spec.lora, spec.parent_adapter)
    if spec.kind == "reward_model":
        trainable = RewardModel.fresh(lm)
    elif spec.kind == "ppo":
        trainable = PolicyWithValue(lm)
    else:
        trainable = lm
    loop_options: dict[str, Any] = {"checkpoint_dir": spec.checkpoint_dir, "rank": world.rank,
                                    "world_size": world.world_size}
    if world.world_size > 1:
        if spec.deepspeed is None:
            raise ValueError("more than one process needs a DeepSpeed config: set `deepspeed: zero2` (or zero3)")
        loop_options["engine"] = deepspeed_engine(trainable, settings, spec.deepspeed)
    emit_progress("start", {"trainer": spec.kind, "examples": len(records), "threads": torch.get_num_threads(),
                            "interop_threads": torch.get_num_interop_threads()})

    if spec.kind == "preference":
        examples = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], r.get("target", 1.0)) for r in records]
        result = PreferenceTrainer(lm, tokenizer, settings, **loop_options).train(examples, _progress(spec.kind))
        metrics = result.metrics()
    elif spec.kind == "sft":
        examples = [SFTExample(r["prompt"], r["response"]) for r in records]
        metrics = SFTTrainer(lm, tokenizer, settings, **loop_options).train(examples, _progress(spec.kind)).metrics()
    elif spec.kind == "reward_model":
        examples = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], r.get("target", 1.0)) for r in records]
        evaluation, steps = RewardModelTrainer(trainable, tokenizer, settings, **loop_options).train(
            examples, _progress(spec.kind))
        metrics = reward_eval_metrics(evaluation) | {"rm_optimizer_steps": float(len(steps))}
        log.info("reward model evaluation: %s", asdict(evaluation))
    else:
        reward_fn = _reward_model_fn(spec, tokenizer)
        served = None
        if spec.rollout_server:
            prefix = "ppo-" + hashlib.sha256(str(spec.output_dir.resolve()).encode()).hexdigest()[:10]
            served = ServedRollouts(spec.rollout_server, lm, spec.output_dir / "rollout-adapters", prefix)
        steps = PPOTrainer(trainable, tokenizer, settings, reward_fn, served=served, **loop_options).train(
            [r["prompt"] for r in records], _progress(spec.kind))
        metrics = {f"ppo_{k}_first": v for k, v in steps[0].metrics.items()}
        metrics |= {f"ppo_{k}_last": v for k, v in steps[-1].metrics.items()}

    if world.is_main:
        save_adapter(lm, spec.adapter_dir, *([trainable.head] if spec.kind == "reward_model" else []))
        atomic_write_text(spec.result_path, json.dumps({"kind": spec.kind, "metrics": metrics}, indent=1))
    emit_progress("done", {"trainer": spec.kind})
    return metrics


def _reward_model_fn(spec: TrainSpec, tokenizer):
    """Score rollouts with a trained reward model (a second, frozen copy: its adapter differs from the policy's)."""
    if spec.reward_model_dir is None:
        raise ValueError("PPO needs `reward_model_dir`: train a reward model first")
    base, _ = load_model(spec.model_dir, dtype=spec.dtype, device=spec.device, adapter=spec.reward_model_dir)
    scorer = RewardModel.load(base, spec.reward_model_dir).eval()

    @torch.no_grad()
    def score(rollouts: list[Rollout]) -> list[float]:
        batch = collate_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                                  tokenizer.pad_token_id)
        device = next(scorer.parameters()).device
        return scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().tolist()

    return score


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m policies.training SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r")
    spec = TrainSpec.model_validate_json(Path(argv[0]).read_text())
    run(spec)
    return 0

