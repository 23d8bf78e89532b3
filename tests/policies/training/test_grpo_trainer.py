"""GRPO on a tiny model: it raises a toy reward, resumes exactly, learns nothing from a group without spread,
survives a failing reward, masks truncated completions, and trains end to end through the entry point on the
default `task` reward."""

import json
import logging
import math

import pytest
import torch
from pydantic import ValidationError

from policies.adapters import LoraSettings
from policies.models import load_model
from policies.serving import SamplingParams
from policies.training.grpo import GRPOTrainer, group_relative, loss_weights, trained_rewards
from policies.training.grpo_rewards import GRPOExample, default_reward_fn, parse_example
from policies.training.rollouts import Rollout, sample_rollouts
from policies.training.run import run
from policies.training.settings import GRPOSettings
from policies.training.spec import TrainSpec
from rewards import RewardSettings
from tests.policies.training.toy_policies import Crash, crash_at_step, toy_lm, trainable_weights

PROMPTS = [GRPOExample([{"role": "user", "content": f"Say something {i}"}], "benign") for i in range(8)]


def peaked(tiny_model_dir, seed: int = 0, dropout: float = 0.0):
    """The peaked toy policy of PPO's tests, its adapter initialised from `seed`."""
    return toy_lm(tiny_model_dir, LoraSettings(r=8, alpha=16, dropout=dropout), adapter_seed=seed)


def small(**fields) -> GRPOSettings:
    defaults = {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "batch_size": 2,
                "learning_rate": 3e-3, "overlong": "none"}
    return GRPOSettings(**(defaults | fields))


def even_tokens(examples, rollouts):
    return [(float(sum(t % 2 == 0 for t in r.completion_ids)), {}) for r in rollouts]


def test_grpo_raises_a_toy_reward(tiny_model_dir):
    model, tokenizer = peaked(tiny_model_dir)
    probe = GRPOTrainer(model, tokenizer, small(max_new_tokens=16), even_tokens)
    sampled = probe.rollout([e.prompt for e in PROMPTS] * 2, seed=1)
    counts = torch.bincount(torch.tensor([t for r in sampled for t in r.completion_ids]))
    target = int(counts[100:132].argmax()) + 100  # the reward counts one of the likely tokens

    def reward(examples, rollouts):
        return [(float(sum(t == target for t in r.completion_ids)), {"toy/target": 1.0}) for r in rollouts]

    settings = small(steps=6, prompts_per_step=4, group_size=4, max_new_tokens=16, batch_size=8, beta=0.02)
    steps = GRPOTrainer(model, tokenizer, settings, reward).fit(PROMPTS).steps
    first, last = steps[0].metrics, steps[-1].metrics
    assert last["reward_mean"] > first["reward_mean"] + 1.0
    assert last["kl"] > 0  # the policy moved away from the reference
    assert last["toy/target"] == 1.0 and last["unscored"] == 0
    for key in ("loss", "kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "reward_std",
                "zero_spread_groups", "completion_length", "grad_norm"):
        assert all(math.isfinite(s.metrics[key]) for s in steps), key


def test_grpo_resumes_exactly_from_its_checkpoint(tiny_model_dir, tmp_path):
    """Stopped after a checkpoint and restarted, a run ends with the uninterrupted run's adapter (with dropout,
    two inner epochs and a schedule): optimizer, schedule and RNG come back and the steps derive from (seed, step)."""
    settings = small(steps=3, inner_epochs=2, scheduler="linear", checkpoint_every=1, beta=0.04, seed=3)
    model, tokenizer = peaked(tiny_model_dir, seed=1, dropout=0.2)
    whole = GRPOTrainer(model, tokenizer, settings, even_tokens, checkpoint_dir=tmp_path / "a").fit(PROMPTS)
    uninterrupted = trainable_weights(model)

    model, _ = peaked(tiny_model_dir, seed=1, dropout=0.2)
    with pytest.raises(Crash):
        GRPOTrainer(model, tokenizer, settings, even_tokens, checkpoint_dir=tmp_path / "b").fit(PROMPTS,
                                                                                                 crash_at_step(2))
    model, _ = peaked(tiny_model_dir, seed=7, dropout=0.2)  # another init: the checkpoint must override it
    resumed = GRPOTrainer(model, tokenizer, settings, even_tokens, checkpoint_dir=tmp_path / "b").fit(PROMPTS)
    assert [s.step for s in resumed.steps] == [2, 3]
    assert resumed.steps[-1].metrics["reward_mean"] == whole.steps[-1].metrics["reward_mean"]
    for name, value in trainable_weights(model).items():
        torch.testing.assert_close(value, uninterrupted[name], atol=1e-6, rtol=1e-5)


def test_a_group_without_spread_leaves_the_weights_alone_without_kl(tiny_model_dir):
    model, tokenizer = peaked(tiny_model_dir, seed=2)
    with torch.no_grad():  # a trained-looking adapter, so that only the zero advantages keep the loss flat
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = trainable_weights(model)
    steps = GRPOTrainer(model, tokenizer, small(beta=0.0), lambda e, r: [(0.5, {})] * len(r)).fit(PROMPTS).steps
    assert steps[0].metrics["zero_spread_groups"] == 1.0 and steps[0].metrics["updates"] == 2
    for name, value in trainable_weights(model).items():
        assert torch.equal(value, before[name]), name


def test_a_failing_reward_is_recorded_and_training_goes_on(tiny_model_dir, caplog):
    model, tokenizer = peaked(tiny_model_dir)
    calls = []

    def flaky(examples, rollouts):
        calls.append(len(rollouts))
        if len(calls) == 2:
            raise RuntimeError("the grader is down")
        return even_tokens(examples, rollouts)

    with caplog.at_level(logging.ERROR, logger="policies.training.grpo"):
        steps = GRPOTrainer(model, tokenizer, small(steps=3), flaky).fit(PROMPTS).steps
    assert [s.metrics["unscored"] for s in steps] == [0.0, 4.0, 0.0]
    assert math.isnan(steps[1].metrics["reward_mean"]) and steps[1].metrics["zero_spread_groups"] == 1.0
    assert math.isfinite(steps[2].metrics["reward_mean"])
    assert "the reward function failed" in caplog.text and "the grader is down" in caplog.text


def _rollout(truncated: bool) -> Rollout:
    return Rollout([{"role": "user", "content": "hi"}], "text", [1, 2], [3, 4], truncated)


def test_overlong_completions_are_masked_or_penalised():
    rollouts = [_rollout(False), _rollout(True), _rollout(True), _rollout(False)]
    assert loss_weights(rollouts, "mask").tolist() == [1.0, 0.0, 0.0, 1.0]
    assert loss_weights(rollouts, "none").tolist() == loss_weights(rollouts, "penalty").tolist() == [1.0] * 4
    scores = [(1.0, {}), (1.0, {}), (None, {}), (float("nan"), {})]
    assert trained_rewards(scores, rollouts, GRPOSettings()) == [1.0, 1.0, None, None]
    penalty = GRPOSettings(overlong="penalty", overlong_penalty=0.5)
    assert trained_rewards(scores, rollouts, penalty) == [1.0, 0.5, None, None]


def test_unscored_completions_get_no_advantage_and_leave_the_others_centred():
    advantages, zero_spread = group_relative([1.0, None, 0.0, 2.0, None, None], group_size=3, scale="none")
    assert advantages.tolist() == [0.5, 0.0, -0.5, 0.0, 0.0, 0.0]  # one scored completion: nothing to compare
    assert zero_spread.tolist() == [False, True]


def test_sampled_rollouts_know_when_they_were_cut(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir, device="cpu")
    eos = tokenizer.eos_token_id

    class Fixed:
        name = "fixed"

        def generate_tokens(self, prompts, params):
            return [[5, 6, 7], [5, 6, eos], [5]]

    prompts = [[{"role": "user", "content": "hi"}]] * 3
    rollouts = sample_rollouts(Fixed(), tokenizer, prompts, SamplingParams(max_new_tokens=3), max_length=64)
    assert [r.truncated for r in rollouts] == [True, False, False]


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "grpo", "bnpo"])
def test_the_window_loss_does_not_depend_on_how_it_is_split(tiny_model_dir, loss_type):
    """One optimizer step over four completions of unequal lengths, some cut and masked, as one micro-batch or as
    four accumulated: the same update, except under bnpo, which normalises by each micro-batch's own tokens."""
    results = []
    for batch_size, grad_accum in ((4, 1), (1, 4)):
        model, tokenizer = peaked(tiny_model_dir, seed=4)
        with torch.no_grad():  # the end-of-sequence token becomes likely: completions of several lengths
            torch.manual_seed(5)
            model.get_base_model().lm_head.weight[tokenizer.eos_token_id] = 2 * torch.randn(model.config.hidden_size)
        # SGD without clipping: the update is the gradient itself, so a wrong normaliser shows.
        settings = small(loss_type=loss_type, batch_size=batch_size, grad_accum=grad_accum, optimizer="sgd",
                         learning_rate=0.1, max_grad_norm=1e6, beta=0.1, overlong="mask")
        metrics = GRPOTrainer(model, tokenizer, settings, even_tokens).fit(PROMPTS).steps[0].metrics
        assert 0 < metrics["truncated"] < 1 and metrics["zero_spread_groups"] < 1
        results.append(trainable_weights(model))
    gap = max((results[1][name] - value).abs().max().item() for name, value in results[0].items())
    assert gap > 1e-3 if loss_type == "bnpo" else gap < 1e-5


@pytest.mark.parametrize("fields", [{"loss_type": "bnpo"}, {"importance_level": "sequence", "inner_epochs": 2},
                                    {"scale": "batch", "overlong": "mask"}])
def test_every_variant_trains(tiny_model_dir, fields):
    model, tokenizer = peaked(tiny_model_dir)
    steps = GRPOTrainer(model, tokenizer, small(**fields), even_tokens).fit(PROMPTS).steps
    assert all(math.isfinite(v) for v in steps[0].metrics.values())


def _spec(tmp_path, **fields) -> TrainSpec:
    base = {"kind": "grpo", "model_dir": tmp_path, "data": tmp_path / "data.jsonl", "output_dir": tmp_path / "out"}
    return TrainSpec(**(base | fields))


def test_the_builder_refuses_rewards_it_cannot_compute(tmp_path):
    with pytest.raises(ValueError, match="constitution"):
        default_reward_fn(_spec(tmp_path, rewards=RewardSettings(components=[{"kind": "checks"}])))
    with pytest.raises(ValueError, match="'judge'"):
        default_reward_fn(_spec(tmp_path, rewards=RewardSettings(components=[{"kind": "judge"}])))
    with pytest.raises(ValueError, match="'reward_model' needs a trained reward model"):
        default_reward_fn(_spec(tmp_path, rewards=RewardSettings(components=[{"kind": "reward_model"}])))


def test_the_default_reward_checks_the_task_and_checks_the_constitution(tmp_path):
    from constitution.source import resolve_constitution_path

    example = parse_example({"prompt": [{"role": "user", "content": "Name a colour."}], "category": "benign",
                             "task": {"constraints": [{"kind": "max_words", "value": 3}]}, "principle": None})
    rollouts = [Rollout(example.prompt, text, [1], [2]) for text in ("Blue.", "It is a deep shade of blue.")]
    task = default_reward_fn(_spec(tmp_path))([example] * 2, rollouts)
    assert task == [(1.0, {"task/max_words<=3": 1.0}), (0.0, {"task/max_words<=3": 0.0})]
    checks = _spec(tmp_path, rewards=RewardSettings(components=[{"kind": "checks"}]),
                   constitution=resolve_constitution_path("default"))
    scored = default_reward_fn(checks)([example] * 2, rollouts)
    assert all(total is not None and components for total, components in scored)
    assert all(name.startswith("checks/") for _, components in scored for name in components)
    with pytest.raises(ValueError, match="category"):
        parse_example({"prompt": example.prompt})


def test_the_spec_takes_grpo_and_its_settings_are_checked(tmp_path):
    spec = TrainSpec.model_validate_json(_spec(tmp_path, grpo=GRPOSettings(group_size=8)).model_dump_json())
    assert spec.kind == "grpo" and spec.grpo.group_size == 8 and spec.rewards is None
    with pytest.raises(ValidationError, match="group_size"):
        GRPOSettings(group_size=1)
    with pytest.raises(ValidationError, match="overlong_penalty"):
        GRPOSettings(overlong_penalty=2.0)


def test_run_trains_grpo_on_the_default_task_reward(tiny_model_dir, tmp_path):
    task = {"constraints": [{"kind": "max_words", "value": 3}]}
    records = [{"prompt": [{"role": "user", "content": f"Name a colour ({i})."}], "category": "benign", "task": task,
                "principle": None} for i in range(3)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = _spec(tmp_path, model_dir=tiny_model_dir, device="cpu", lora={"r": 4, "alpha": 8},
                 grpo=GRPOSettings(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=4, batch_size=2))
    metrics = run(spec)
    assert json.loads(spec.result_path.read_text())["kind"] == "grpo"
    assert (spec.adapter_dir / "adapter_model.safetensors").is_file()
    assert "grpo_task/max_words<=3_last" in metrics and metrics["grpo_updates_last"] == 2
    assert metrics["grpo_unscored_last"] == 0
