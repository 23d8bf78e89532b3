"""Every run-config field acts or is rejected: each either reaches the trainer specs the loop builds, or is listed
here as acting in the loop only (with where it acts); the train settings reject values that would do nothing."""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from loop.config import RunConfig
from loop.pipeline.stages.train import train_spec

LOOP_ONLY = {
    "home": "caches: where the built-in model is converted (the spec gets the converted model_dir)",
    "constitution": "critique and judge stages; resolved, the grpo spec's constitution (tested below)",
    "model.name": "resolved by the loop's engines into the spec's model_dir",
    "prompts": "generate stage (prompt files and count)",
    "generation": "generate stage; with backend vllm-server, server.url is also PPO's rollout_server",
    "critique": "critique stage",
    "judge": "judge stage and the pair margin",
    "pairs": "generate stage (contrasts) and pairs stage (source, sampler)",
    "evaluation": "evaluate stage and `cai eval` (held-out sets, refusal classifier)",
    "gates": "the promotion decision when an iteration finishes",
    "service": "how the daemon shards an iteration for its workers (`cai run`, `cai worker`)",
    "tracking": "where the iteration's metrics are also sent (TensorBoard, W&B); changes no result",
    "train.launcher": "the command that starts the trainer process (launcher.launch)",
    "train.processes": "the number of trainer processes (launcher.launch)",
    "train.nodes": "the train stage's shards, one per node (loop.service.gang), and srun's node count",
    "train.rendezvous": "where the gang's nodes meet (loop.service.gang, launcher.Rendezvous)",
    "train.rendezvous_timeout_s": "torchrun's rendezvous timeout and the gang's wait (launcher.Rendezvous)",
    "train.slurm_args": "srun's extra arguments (launcher.command)",
    "rewards": "judge stage: how sampled answers are scored (loop.rewards.reward_scorer); the grpo spec's rewards "
               "(tested below)",
    "train.replay": "train stage: which earlier pairs are trained on again (train_data.replay_pairs)",
    "train.budget": "train stage: how many pairs are trained on (train_data.within_budget)",
    "train.warm_start": "train stage: its own SFT run's settings (train.warm_start_settings, tested below)",
}

# Settings that only act in some configurations: the walk changes them inside such a configuration.
CONTEXT = {
    "train.sft.": {"train": {"sft_on_revisions": True}},
    "train.reward_model.": {"train": {"trainer": "ppo"}},
    "train.ppo.": {"train": {"trainer": "ppo"}},
    "train.ppo.kl_target": {"train": {"trainer": "ppo", "ppo": {"adaptive_kl": True}}},
    "train.ppo.kl_horizon": {"train": {"trainer": "ppo", "ppo": {"adaptive_kl": True}}},
    "train.grpo.": {"train": {"trainer": "grpo"}},
    "train.grpo.overlong_penalty": {"train": {"trainer": "grpo", "grpo": {"overlong": "penalty"}}},
    "train.preference.label_smoothing": {"train": {"trainer": "cdpo", "preference": {"label_smoothing": 0.2}}},
    "train.preference.simpo_gamma": {"train": {"trainer": "simpo"}},
    "train.preference.kto_desirable_weight": {"train": {"trainer": "kto"}},
    "train.preference.kto_undesirable_weight": {"train": {"trainer": "kto"}},
    "train.deepspeed": {"train": {"launcher": "torchrun", "processes": 2, "deepspeed": "zero3"}},
}
VALUES = {"train.deepspeed": "zero2", "train.trainer": "ipo", "train.lora.target_modules": ["q_proj", "v_proj"],
          "model.device": "cpu"}


def leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, info in model.model_fields.items():
        path = prefix + name
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out += leaves(info.annotation, path + ".")
        else:
            out.append((path, info))
    return out


def is_loop_only(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in LOOP_ONLY)


def nested(path: str, value) -> dict:
    head, _, rest = path.partition(".")
    return {head: nested(rest, value) if rest else value}


def merge(a: dict, b: dict) -> dict:
    return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                    for k, v in b.items()}}


def get(data: dict, path: str, default):
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def other_value(path: str, info, current):
    if path in VALUES:
        return VALUES[path]
    choices = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
    if current is None:
        kind = choices[0]
        return 2 if kind is int else 0.3 if kind is float else pytest.fail(f"no value for {path}")
    if isinstance(current, bool):
        return not current
    if isinstance(current, enum.Enum) or typing.get_origin(info.annotation) in (typing.Literal, types.UnionType):
        options = [v for a in choices for v in (list(a) if isinstance(a, type) and issubclass(a, enum.Enum)
                                                 else typing.get_args(a) or [a])]
        others = [o for o in options if o != current and not isinstance(o, type)]
        if others:
            return others[0]
    if isinstance(current, int):
        return current + 1
    if isinstance(current, float):
        return current * 0.5 if current else 0.1
    pytest.fail(f"no other value for {path} = {current!r}")


def specs(data: dict) -> dict[str, dict]:
    config = RunConfig(**data)
    return {kind: train_spec(config, kind, iteration=1, model_dir=Path("m"), data=Path("d.jsonl"),
                             output_dir=Path("o")).model_dump(mode="json")
            for kind in config.train.used_sections()}


BASE = {"prompts": {"files": ["p.jsonl"]}}
WALKED = [(path, info) for path, info in leaves(RunConfig) if not is_loop_only(path)]


@pytest.mark.parametrize(("path", "info"), WALKED, ids=[p for p, _ in WALKED])
def test_every_config_field_reaches_a_trainer_spec(path, info):
    context = merge(BASE, next((c for p, c in sorted(CONTEXT.items(), key=lambda kv: -len(kv[0]))
                                if path.startswith(p)), {}))
    current = get(context, path, info.get_default(call_default_factory=True))
    changed = merge(context, nested(path, other_value(path, info, current)))
    assert specs(changed) != specs(context), f"{path} does not reach any trainer spec"


def test_the_walk_covers_the_train_section_and_the_seed():
    walked = {p for p, _ in WALKED}
    assert {"seed", "threads", "model.dtype", "train.trainer", "train.preference.beta", "train.ppo.kl_coef",
            "train.lora.r", "train.sft_on_revisions", "train.grpo.beta", "train.grpo.overlong_penalty"} <= walked


def test_the_run_seed_gives_each_trainer_its_own_seed():
    config = RunConfig(**merge(BASE, {"seed": 7, "train": {"trainer": "ppo"}}))
    seeds = {train_spec(config, kind, iteration=1, model_dir=Path("m"), data=Path("d"), output_dir=Path("o"))
             .model_dump()[kind]["seed"] for kind in ("reward_model", "ppo")}
    assert len(seeds) == 2


@pytest.mark.parametrize(("train", "message"), [
    ({"trainer": "cdpo"}, "cdpo needs label_smoothing > 0"),
    ({"trainer": "rdpo"}, "rdpo needs label_smoothing > 0"),
    ({"trainer": "ipo", "preference": {"soft_labels": True}}, "soft_labels is only used by the dpo loss"),
    ({"trainer": "cdpo", "preference": {"soft_labels": True, "label_smoothing": 0.1}}, "soft_labels"),
    ({"trainer": "dpo", "preference": {"label_smoothing": 0.1}}, "label_smoothing is only used by the cdpo/rdpo"),
    ({"trainer": "dpo", "preference": {"simpo_gamma": 1.0}}, "simpo_gamma is only used by the simpo loss"),
    ({"trainer": "simpo", "preference": {"reference": "online"}}, "reference-free"),
    ({"preference": {"loss": "ipo"}}, "train.preference.loss cannot be set: the preference loss is named by"),
    ({"sft": {"seed": 3}}, "train.sft.seed cannot be set"),
    ({"trainer": "ppo", "preference": {"beta": 0.2}}, "train.preference is set but unused"),
    ({"ppo": {"rollouts": 2}}, "train.ppo is set but unused"),
    ({"sft": {"epochs": 2}}, "train.sft is set but unused: it applies only with train.sft_on_revisions"),
    ({"trainer": "ppo", "ppo": {"kl_target": 3.0}}, "kl_target is only used with adaptive_kl"),
    ({"trainer": "ppo", "ppo": {"epochs": 2}}, "Extra inputs are not permitted"),
    ({"processes": 2}, "train.processes > 1 needs"),
    ({"deepspeed": "zero2"}, "train.deepspeed applies only with more than one process"),
    ({"launcher": "torchrun", "processes": 2}, "2 training processes need train.deepspeed"),
    ({"nodes": 2, "deepspeed": "zero2"}, "train.nodes > 1 needs train.launcher: torchrun (a gang"),
    ({"nodes": 2, "launcher": "torchrun"}, "2 training processes need train.deepspeed"),
    ({"rendezvous": "node0:29500"}, "train.rendezvous applies only with train.nodes > 1"),
    ({"rendezvous_timeout_s": 60}, "train.rendezvous_timeout_s applies only with train.nodes > 1"),
    ({"nodes": 2, "launcher": "torchrun", "deepspeed": "zero2", "rendezvous": "node0"}, "must be HOST:PORT"),
    ({"slurm_args": ["--partition=gpu"]}, "train.slurm_args applies only with train.launcher: slurm"),
    ({"nodes": 0}, "train.nodes\n  Input should be greater than or equal to 1"),
    ({"replay": {"max_pairs": -1}}, "train.replay.max_pairs\n  Input should be greater than or equal to 0"),
    ({"replay": {"max_pairs": 2, "from_iterations": 0}}, "greater than or equal to 1"),
    ({"replay": {"from_iterations": 2}}, "from_iterations applies only with max_pairs > 0 (replay is off)"),
    ({"replay": {"pairs": 2}}, "train.replay.pairs\n  Extra inputs are not permitted"),
    ({"budget": {"max_pairs": 0}}, "train.budget.max_pairs\n  Input should be greater than or equal to 1"),
    ({"warm_start": {"iterations": -1}}, "greater than or equal to 0"),
    ({"warm_start": {"iterations": 1, "learning_rate": 0}}, "train.warm_start.learning_rate\n  Input should be "
                                                             "greater than 0"),
    ({"warm_start": {"epochs": 2, "max_completion_length": 8}},
     "epochs, max_completion_length applies only with iterations > 0 (the warm start is off)"),
    ({"warm_start": {"iterations": 1}}, "train.warm_start needs pairs.source: sampled (it trains on the scored "
                                        "sampled answers), not judged"),
    ({"grpo": {"steps": 2}}, "train.grpo is set but unused: it applies only with train.trainer: grpo"),
    ({"trainer": "ppo", "grpo": {"group_size": 8}}, "train.grpo is set but unused"),
    ({"trainer": "grpo", "preference": {"beta": 0.2}}, "train.preference is set but unused"),
    ({"trainer": "grpo", "grpo": {"seed": 3}}, "train.grpo.seed cannot be set"),
    ({"trainer": "grpo", "grpo": {"overlong_penalty": 0.5}}, "overlong_penalty is only used with overlong: penalty"),
    ({"trainer": "grpo", "grpo": {"group_size": 1}}, "train.grpo.group_size\n  Input should be greater than or equal"),
    ({"trainer": "grpo", "sft_on_revisions": True}, "train.sft_on_revisions needs revisions, which a grpo iteration"),
    ({"trainer": "grpo", "replay": {"max_pairs": 4}}, "train.replay is set but unused: it selects preference pairs"),
    ({"trainer": "grpo", "budget": {"max_pairs": 4}}, "train.budget is set but unused"),
])
def test_settings_that_would_do_nothing_are_rejected(train, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**merge(BASE, {"train": train}))


def test_a_saved_config_loads_again():
    # Defaults written out in full (as the run directory's config.yaml is) must not trip the checks above.
    config = RunConfig(**merge(BASE, {"train": {"trainer": "rdpo", "preference": {"label_smoothing": 0.1}}}))
    assert RunConfig(**config.model_dump(mode="json")) == config


def test_the_warm_start_settings_reach_its_sft_run():
    from loop.config.training import WarmStartSettings
    from loop.pipeline.stages.train import trainer_seed, warm_start_settings

    config = RunConfig(**merge(BASE, {"seed": 7, "train": {"sft_on_revisions": True}}))
    # Built past validation: the sampled pair source the warm start needs is another change's.
    warm = WarmStartSettings(iterations=2, learning_rate=1e-3, epochs=3, max_completion_length=12)
    config = config.model_copy(update={"train": config.train.model_copy(update={"warm_start": warm})})
    settings = warm_start_settings(config, 1)
    assert (settings.learning_rate, settings.epochs, settings.max_completion_length) == (1e-3, 3, 12)
    assert settings.seed != trainer_seed(7, 1, "sft")  # its own seed, not the revisions' SFT run's
    assert settings.seed != warm_start_settings(config, 2).seed
    assert warm.applies_to(2) and not warm.applies_to(3)


def test_a_grpo_spec_carries_the_runs_rewards_and_its_resolved_constitution(tmp_path):
    from constitution.source import resolve_constitution_path

    rewards = {"components": [{"kind": "task", "weight": 1.0}, {"kind": "checks", "weight": 0.5}],
               "refusal_classifier": "lexical"}
    config = RunConfig(**merge(BASE, {"seed": 7, "rewards": rewards, "train": {"trainer": "grpo",
                                                                              "grpo": {"steps": 3}}}))
    assert config.train.used_sections() == ["grpo"]
    spec = train_spec(config, "grpo", iteration=2, model_dir=Path("m"), data=Path("d"), output_dir=Path("o"))
    assert spec.rewards == config.rewards and spec.grpo.steps == 3
    assert spec.constitution == resolve_constitution_path("default") and spec.constitution.is_file()
    mine = tmp_path / "mine.yaml"
    config = config.model_copy(update={"constitution": str(mine)})
    assert train_spec(config, "grpo", iteration=2, model_dir=Path("m"), data=Path("d"),
                      output_dir=Path("o")).constitution == mine
    dpo = RunConfig(**BASE)  # the other trainers score nothing themselves
    spec = train_spec(dpo, "preference", iteration=1, model_dir=Path("m"), data=Path("d"), output_dir=Path("o"))
    assert (spec.rewards, spec.constitution) == (None, None)


@pytest.mark.parametrize(("sections", "message"), [
    ({"rewards": {"components": [{"kind": "judge"}]}}, "rewards kind judge is not available to train.trainer: grpo"),
    ({"rewards": {"components": [{"kind": "task"}, {"kind": "reward_model"}]}}, "rewards kind reward_model"),
    ({"generation": {"samples_per_prompt": 2}}, "generation.samples_per_prompt is unused with train.trainer: grpo"),
])
def test_what_a_grpo_iteration_cannot_use_is_rejected(sections, message):
    with pytest.raises(ValidationError, match=message):
        RunConfig(**merge(BASE, {"train": {"trainer": "grpo"}, **sections}))
