"""SFT, the reward model and PPO on a tiny model, plus the reward model's evaluation maths by hand."""

import math

import pytest
import torch

from policies.adapters import LoraSettings, attach_trainable_adapter
from policies.models import load_model
from policies.training.data import PreferenceExample
from policies.training.ppo import PolicyWithValue, PPOTrainer
from policies.training.reward_model import (
    RewardModel,
    RewardModelTrainer,
    expected_calibration_error,
    pearson,
    split_held_out,
)
from policies.training.settings import PPOSettings, RewardModelSettings, SFTSettings
from policies.training.sft import SFTExample, SFTTrainer
from tests.policies.training.toy_policies import Crash, crash_at_step, toy_lm, trainable_weights


def test_pearson_by_hand():
    # x = 1,2,3; y = 2,4,7: means 2 and 13/3; covariance sum = (-1)(-7/3) + 0 + 1(8/3) = 5;
    # sx = sqrt(2); sy = sqrt(49/9 + 1/9 + 64/9) = sqrt(114)/3.
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / (math.sqrt(2) * math.sqrt(114) / 3))
    assert math.isnan(pearson([1, 1], [2, 3]))


def test_expected_calibration_error_by_hand():
    # Two bins on confidence [0.5, 1]: 0.6 and 0.4 both have confidence 0.6 (bin 0); 0.9 goes to bin 1.
    # Bin 0: mean confidence 0.6, chosen predicted for 1 of 2 -> |0.6 - 0.5| * 2/3; bin 1: |0.9 - 1| * 1/3.
    expected = 0.1 * 2 / 3 + 0.1 * 1 / 3
    assert expected_calibration_error([0.6, 0.4, 0.9], bins=2) == pytest.approx(expected)


def test_held_out_split_is_disjoint_and_keeps_training_data():
    train, held = split_held_out(10, 0.2, seed=1)
    assert len(held) == 2 and not set(train) & set(held) and sorted(train + held) == list(range(10))
    assert split_held_out(1, 0.2, seed=1) == ([0], [])


def test_sft_lowers_the_loss_on_its_examples(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    examples = [SFTExample([{"role": "user", "content": f"Say hello {i}"}], "Hello there, friend.") for i in range(4)]
    result = SFTTrainer(model, tokenizer, SFTSettings(learning_rate=2e-2, epochs=4, batch_size=2,
                                                      max_length=64)).fit(examples)
    assert len(result.steps) == 8
    assert result.metrics["sft_loss_after"] < result.metrics["sft_loss_before"]


def test_reward_model_learns_a_consistent_preference(tiny_model_dir):
    lm, tokenizer = load_model(tiny_model_dir, device="cpu")
    lm = attach_trainable_adapter(lm, LoraSettings(r=4, alpha=8))
    model = RewardModel.fresh(lm)
    examples = [PreferenceExample([{"role": "user", "content": f"Question {i}"}],
                                  chosen="Sure, here it is: " + "ok " * i, rejected="No.", target=0.9)
                for i in range(12)]
    settings = RewardModelSettings(learning_rate=2e-2, epochs=6, batch_size=4, max_length=64, eval_fraction=0.25)
    result = RewardModelTrainer(model, tokenizer, settings).fit(examples)
    evaluation, steps = result.metrics, result.steps
    assert evaluation["rm_pairs"] == 3
    assert evaluation["rm_accuracy"] == 1.0
    assert 0 <= evaluation["rm_ece"] <= 1 and 0 <= evaluation["rm_judge_mae"] <= 1
    assert -1 <= evaluation["rm_length_correlation"] <= 1
    assert steps[-1].metrics["loss"] < steps[0].metrics["loss"]


@pytest.fixture
def peaked_policy(tiny_model_dir):
    """A tiny random policy whose next-token distribution concentrates on 32 tokens, so a reward on one of them
    is seen often enough for PPO to act on within a few steps."""
    lm, tokenizer = toy_lm(tiny_model_dir, LoraSettings(r=8, alpha=16))
    return PolicyWithValue(lm), tokenizer


def test_ppo_raises_a_toy_reward(peaked_policy):
    model, tokenizer = peaked_policy
    prompts = [[{"role": "user", "content": f"Say something {i}"}] for i in range(8)]
    probe = PPOTrainer(model, tokenizer, PPOSettings(), reward_fn=lambda rollouts: [0.0] * len(rollouts))
    counts = torch.bincount(torch.tensor([t for r in probe.rollout(prompts * 2, seed=1) for t in r.completion_ids]))
    target = int(counts[100:132].argmax()) + 100  # the reward counts one of the likely tokens

    def reward(rollouts):
        return [float(sum(t == target for t in r.completion_ids)) for r in rollouts]

    settings = PPOSettings(rollouts=6, rollout_batch_size=16, max_new_tokens=16, batch_size=4, learning_rate=3e-3,
                           kl_coef=0.02, ppo_epochs=2, seed=0)
    steps = PPOTrainer(model, tokenizer, settings, reward).fit(prompts).steps
    first, last = steps[0].metrics, steps[-1].metrics
    assert last["reward_mean"] > first["reward_mean"] + 1.0
    assert last["kl"] > 0  # the policy moved away from the reference
    for key in ("kl", "entropy", "clip_fraction", "reward_mean", "reward_std", "value_loss", "policy_loss"):
        assert all(math.isfinite(s.metrics[key]) for s in steps), key


def test_ppo_resumes_exactly_from_its_checkpoint(peaked_policy, tiny_model_dir, tmp_path):
    """A PPO run stopped after a checkpoint and restarted ends with the weights (adapter with dropout, value head)
    of the uninterrupted run: optimizer, schedule, RNG and KL coefficient come back from the checkpoint."""
    _, tokenizer = peaked_policy
    prompts = [[{"role": "user", "content": f"Say something {i}"}] for i in range(6)]
    settings = PPOSettings(rollouts=3, rollout_batch_size=4, max_new_tokens=6, batch_size=2, learning_rate=3e-3,
                           scheduler="linear", adaptive_kl=True, kl_target=0.5, checkpoint_every=1)

    def reward(rollouts):
        return [float(sum(t % 2 == 0 for t in r.completion_ids)) for r in rollouts]

    def policy(seed: int):
        # The adapter's and value head's random init: the checkpoint must override it.
        lm, _ = toy_lm(tiny_model_dir, LoraSettings(r=4, alpha=8, dropout=0.2), peaked=False, adapter_seed=seed)
        return PolicyWithValue(lm)

    model = policy(seed=1)
    whole = PPOTrainer(model, tokenizer, settings, reward, checkpoint_dir=tmp_path / "a").fit(prompts)
    uninterrupted = trainable_weights(model)

    model = policy(seed=1)
    with pytest.raises(Crash):
        PPOTrainer(model, tokenizer, settings, reward, checkpoint_dir=tmp_path / "b").fit(prompts, crash_at_step(2))
    model = policy(seed=7)
    resumed = PPOTrainer(model, tokenizer, settings, reward, checkpoint_dir=tmp_path / "b").fit(prompts)
    assert [s.step for s in resumed.steps] == [2, 3]
    assert resumed.steps[-1].metrics["kl_coef"] == whole.steps[-1].metrics["kl_coef"]
    for name, value in trainable_weights(model).items():
        torch.testing.assert_close(value, uninterrupted[name], atol=1e-6, rtol=1e-5)
