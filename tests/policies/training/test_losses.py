"""Tests for policies.losses.

Expected values are worked out by hand with the ``math`` module from small concrete numbers, never by
re-running the torch formula under test. Tensors are float64 so the comparisons can be tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from policies.training.losses import (
    AdaptiveKLController,
    FixedKLController,
    LossType,
    bradley_terry_loss,
    chosen_nll,
    dpo_loss,
    gae,
    hinge_loss,
    ipo_loss,
    kl_penalty,
    kto_loss,
    masked_mean,
    orpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    robust_dpo_loss,
    simpo_loss,
    soft_dpo_loss,
    whiten,
)

REL = 1e-9


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def log_sigmoid(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def approx(values: list[float]) -> object:
    return pytest.approx(values, rel=REL, abs=1e-12)


# Two pairs shared by the reference-based losses.
# Pair 0: chosen log-ratio -1.0 - (-1.5) = 0.5, rejected log-ratio -2.0 - (-1.5) = -0.5, so h = 1.0.
# Pair 1: chosen log-ratio -3.0 - (-2.0) = -1.0, rejected log-ratio -1.0 - (-3.0) = 2.0, so h = -3.0.
POLICY_CHOSEN = (-1.0, -3.0)
POLICY_REJECTED = (-2.0, -1.0)
REF_CHOSEN = (-1.5, -2.0)
REF_REJECTED = (-1.5, -3.0)
H = (1.0, -3.0)


def pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return t(*POLICY_CHOSEN), t(*POLICY_REJECTED), t(*REF_CHOSEN), t(*REF_REJECTED)


# ----------------------------------------------------------------------------------------------------------
# LossType
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "needs_reference", "paired"),
    [
        (LossType.DPO, True, True),
        (LossType.CDPO, True, True),
        (LossType.IPO, True, True),
        (LossType.RDPO, True, True),
        (LossType.HINGE, True, True),
        (LossType.SIMPO, False, True),
        (LossType.ORPO, False, True),
        (LossType.KTO, True, False),
    ],
)
def test_loss_type_properties(member: LossType, needs_reference: bool, paired: bool) -> None:
    assert member.needs_reference is needs_reference
    assert member.paired is paired


def test_loss_type_covers_exactly_the_documented_values() -> None:
    assert {m.value for m in LossType} == {"dpo", "cdpo", "ipo", "rdpo", "hinge", "simpo", "orpo", "kto"}
    assert LossType("simpo") is LossType.SIMPO
    assert LossType.DPO == "dpo"


# ----------------------------------------------------------------------------------------------------------
# DPO family
# ----------------------------------------------------------------------------------------------------------


def test_dpo_loss_and_rewards_by_hand() -> None:
    beta = 0.1
    losses, chosen_rewards, rejected_rewards = dpo_loss(*pairs(), beta=beta)
    # Pair 0: beta * h = 0.1 * 1.0 = 0.1 -> -log sigma(0.1) = log(1 + e^-0.1).
    # Pair 1: beta * h = 0.1 * -3.0 = -0.3 -> log(1 + e^0.3).
    assert losses.tolist() == approx([math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.3))])
    # Rewards are beta * (policy - ref): 0.1 * 0.5, 0.1 * -1.0 and 0.1 * -0.5, 0.1 * 2.0.
    assert chosen_rewards.tolist() == approx([0.05, -0.1])
    assert rejected_rewards.tolist() == approx([-0.05, 0.2])
    assert losses.shape == chosen_rewards.shape == rejected_rewards.shape == (2,)


def test_rpo_term_is_the_chosen_answers_nll_per_token() -> None:
    # Summed log-probs -6.0 over 4 tokens and -1.5 over 3: NLL per token 1.5 and 0.5.
    assert chosen_nll(t(-6.0, -1.5), t(4.0, 3.0)).tolist() == approx([1.5, 0.5])
    # DPO + 1.0 x NLL on pair 0 of `pairs()` (beta h = 0.1, chosen log-prob -1.0 over 2 tokens):
    dpo, _, _ = dpo_loss(*pairs(), beta=0.1)
    policy_chosen = pairs()[0]
    rpo = dpo + 1.0 * chosen_nll(policy_chosen, t(2.0, 2.0))
    assert rpo[0].item() == approx(math.log(1 + math.exp(-0.1)) - policy_chosen[0].item() / 2)


def test_dpo_loss_beta_scales_the_margin() -> None:
    losses, chosen_rewards, _ = dpo_loss(*pairs(), beta=0.5)
    # beta * h = 0.5 and -1.5.
    assert losses.tolist() == approx([-log_sigmoid(0.5), -log_sigmoid(-1.5)])
    assert chosen_rewards.tolist() == approx([0.25, -0.5])


def test_dpo_loss_with_label_smoothing_is_conservative_dpo() -> None:
    eps = 0.2
    losses, _, _ = dpo_loss(*pairs(), beta=0.1, label_smoothing=eps)
    expected = [
        -(1 - eps) * log_sigmoid(0.1) - eps * log_sigmoid(-0.1),
        -(1 - eps) * log_sigmoid(-0.3) - eps * log_sigmoid(0.3),
    ]
    assert losses.tolist() == approx(expected)
    # At h = 0 both terms are log 2, whatever eps is.
    zero = t(-1.0)
    at_zero, _, _ = dpo_loss(zero, zero, zero, zero, beta=0.1, label_smoothing=eps)
    assert at_zero.item() == pytest.approx(math.log(2), rel=REL)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down() -> None:
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = pairs()
    policy_chosen.requires_grad_(True)
    policy_rejected.requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1
    )
    losses.sum().backward()
    assert policy_chosen.grad is not None
    assert policy_rejected.grad is not None
    assert (policy_chosen.grad < 0).all()
    assert (policy_rejected.grad > 0).all()
    # d/dx [-log sigma(beta * x)] = -beta * sigma(-beta * x), evaluated at h = 1.0 and h = -3.0.
    assert policy_chosen.grad.tolist() == approx([-0.1 * sigmoid(-0.1), -0.1 * sigmoid(0.3)])
    assert policy_rejected.grad.tolist() == approx([0.1 * sigmoid(-0.1), 0.1 * sigmoid(0.3)])
    assert not chosen_rewards.requires_grad
    assert not rejected_rewards.requires_grad


def test_dpo_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*pairs(), label_smoothing=1.5)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*pairs(), beta=0.0)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = pairs()
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(policy_chosen.unsqueeze(1), policy_rejected, ref_chosen, ref_rejected)


def test_soft_labels_target_one_equals_dpo() -> None:
    soft, soft_chosen, soft_rejected = soft_dpo_loss(*pairs(), target=t(1.0, 1.0), beta=0.1)
    hard, hard_chosen, hard_rejected = dpo_loss(*pairs(), beta=0.1)
    assert soft.tolist() == approx(hard.tolist())
    assert soft_chosen.tolist() == approx(hard_chosen.tolist())
    assert soft_rejected.tolist() == approx(hard_rejected.tolist())


def test_soft_labels_target_half_is_symmetric() -> None:
    losses, _, _ = soft_dpo_loss(*pairs(), target=t(0.5, 0.5), beta=0.1)
    # -0.5 log sigma(x) - 0.5 log sigma(-x) with x = 0.1 and x = -0.3.
    expected = [
        -0.5 * log_sigmoid(0.1) - 0.5 * log_sigmoid(-0.1),
        -0.5 * log_sigmoid(-0.3) - 0.5 * log_sigmoid(0.3),
    ]
    assert losses.tolist() == approx(expected)
    # Swapping chosen and rejected leaves a 50/50 label unchanged.
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = pairs()
    swapped, _, _ = soft_dpo_loss(
        policy_rejected, policy_chosen, ref_rejected, ref_chosen, target=t(0.5, 0.5)
    )
    assert swapped.tolist() == approx(expected)


def test_soft_labels_per_pair_targets() -> None:
    # Pair 0 judged 70/30 in favour of chosen, pair 1 judged 40/60.
    losses, _, _ = soft_dpo_loss(*pairs(), target=t(0.7, 0.4), beta=0.1)
    expected = [
        -0.7 * log_sigmoid(0.1) - 0.3 * log_sigmoid(-0.1),
        -0.4 * log_sigmoid(-0.3) - 0.6 * log_sigmoid(0.3),
    ]
    assert losses.tolist() == approx(expected)
    # Same thing through dpo_loss with a per-pair label_smoothing tensor (1 - target).
    via_dpo, _, _ = dpo_loss(*pairs(), beta=0.1, label_smoothing=t(0.3, 0.6))
    assert via_dpo.tolist() == approx(expected)
    with pytest.raises(ValueError, match="targets"):
        soft_dpo_loss(*pairs(), target=t(1.2, 0.5))


def test_ipo_loss_by_hand() -> None:
    beta = 0.4
    losses, chosen_rewards, rejected_rewards = ipo_loss(*pairs(), beta=beta)
    # Target margin 1 / (2 * 0.4) = 1.25; (1.0 - 1.25)^2 = 0.0625 and (-3.0 - 1.25)^2 = 18.0625.
    assert losses.tolist() == approx([0.0625, 18.0625])
    assert chosen_rewards.tolist() == approx([0.2, -0.4])
    assert rejected_rewards.tolist() == approx([-0.2, 0.8])
    # The loss is zero exactly at the target margin (beta = 0.5 -> target 1.0 = h of pair 0).
    at_target, _, _ = ipo_loss(*pairs(), beta=0.5)
    assert at_target[0].item() == 0.0


def test_ipo_loss_averages_every_log_prob_over_its_completion_length() -> None:
    # Pair 0 with chosen length 2, rejected length 4: chosen log-ratio (-1.0 + 1.5) / 2 = 0.25,
    # rejected log-ratio (-2.0 + 1.5) / 4 = -0.125, so h = 0.375; target 1 / (2 * 0.4) = 1.25.
    losses, chosen_rewards, rejected_rewards = ipo_loss(
        t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.4, chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([4]))
    assert losses.tolist() == approx([(0.375 - 1.25) ** 2])
    assert chosen_rewards.tolist() == approx([0.4 * 0.25])
    assert rejected_rewards.tolist() == approx([0.4 * -0.125])
    with pytest.raises(ValueError, match="both"):
        ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), chosen_lengths=torch.tensor([2]))


def test_robust_dpo_loss_by_hand() -> None:
    eps = 0.1
    losses, chosen_rewards, _ = robust_dpo_loss(*pairs(), beta=0.1, label_smoothing=eps)
    expected = [
        ((1 - eps) * -log_sigmoid(0.1) - eps * -log_sigmoid(-0.1)) / (1 - 2 * eps),
        ((1 - eps) * -log_sigmoid(-0.3) - eps * -log_sigmoid(0.3)) / (1 - 2 * eps),
    ]
    assert losses.tolist() == approx(expected)
    assert chosen_rewards.tolist() == approx([0.05, -0.1])
    # eps = 0 is plain DPO.
    plain, _, _ = robust_dpo_loss(*pairs(), beta=0.1, label_smoothing=0.0)
    assert plain.tolist() == approx([-log_sigmoid(0.1), -log_sigmoid(-0.3)])
    with pytest.raises(ValueError, match=r"0\.5"):
        robust_dpo_loss(*pairs(), label_smoothing=0.5)


def test_hinge_loss_both_sides() -> None:
    # Pair 0: h = 1.0 -> relu(1 - 0.1) = 0.9 (inside the hinge).
    # Pair 1: h = 20.0 -> relu(1 - 2.0) = 0 (past the hinge).
    policy_chosen = t(-1.0, 0.0).requires_grad_(True)
    losses, _, _ = hinge_loss(policy_chosen, t(-2.0, -20.0), t(-1.5, 0.0), t(-1.5, 0.0), beta=0.1)
    assert losses.tolist() == approx([0.9, 0.0])
    losses.sum().backward()
    assert policy_chosen.grad is not None
    # Slope -beta inside the hinge, flat outside.
    assert policy_chosen.grad.tolist() == approx([-0.1, 0.0])


# ----------------------------------------------------------------------------------------------------------
# Reference-free losses
# ----------------------------------------------------------------------------------------------------------


def test_simpo_loss_by_hand() -> None:
    # Chosen: -6.0 over 3 tokens = -2.0 per token; rejected: -12.0 over 4 tokens = -3.0 per token.
    beta, gamma = 2.0, 0.5
    losses, chosen_rewards, rejected_rewards = simpo_loss(
        t(-6.0), t(-12.0), torch.tensor([3]), torch.tensor([4]), beta=beta, gamma=gamma
    )
    # beta * -2.0 - beta * -3.0 - gamma = -4.0 + 6.0 - 0.5 = 1.5.
    assert losses.tolist() == approx([-log_sigmoid(1.5)])
    assert chosen_rewards.tolist() == approx([-4.0])
    assert rejected_rewards.tolist() == approx([-6.0])


def test_simpo_normalises_by_length() -> None:
    # The same per-token log-probs at different lengths give the same loss.
    short, _, _ = simpo_loss(t(-2.0), t(-3.0), torch.tensor([1]), torch.tensor([1]))
    long, _, _ = simpo_loss(t(-20.0), t(-60.0), torch.tensor([10]), torch.tensor([20]))
    # Default beta = 2.0, gamma = 0.5: 2 * -2 - 2 * -3 - 0.5 = 1.5.
    assert short.tolist() == approx([-log_sigmoid(1.5)])
    assert long.tolist() == approx([-log_sigmoid(1.5)])
    with pytest.raises(ValueError, match="positive"):
        simpo_loss(t(-2.0), t(-3.0), torch.tensor([0]), torch.tensor([1]))


def test_orpo_loss_odds_ratio_by_hand() -> None:
    # Chosen: -1.2 over 4 tokens -> mean -0.3; rejected: -2.0 over 2 tokens -> mean -1.0.
    beta = 0.1
    losses, chosen_rewards, rejected_rewards = orpo_loss(
        t(-1.2), t(-2.0), torch.tensor([4]), torch.tensor([2]), beta=beta
    )
    p_chosen, p_rejected = math.exp(-0.3), math.exp(-1.0)
    odds_chosen = p_chosen / (1 - p_chosen)
    odds_rejected = p_rejected / (1 - p_rejected)
    log_odds_ratio = math.log(odds_chosen / odds_rejected)
    # Eq. 6: the chosen response's mean NLL (0.3) plus lambda times the odds-ratio term.
    assert losses.tolist() == approx([0.3 - beta * log_sigmoid(log_odds_ratio)])
    assert chosen_rewards.tolist() == approx([-0.03])
    assert rejected_rewards.tolist() == approx([-0.1])


def test_orpo_loss_is_finite_at_extremes() -> None:
    # Mean log-prob near 0 (probability ~1) and very negative (probability ~0) must not overflow.
    policy_chosen = t(0.0, -400.0).requires_grad_(True)
    losses, _, _ = orpo_loss(policy_chosen, t(-1e-9, -800.0), torch.tensor([5, 4]), torch.tensor([5, 4]))
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    assert policy_chosen.grad is not None
    assert torch.isfinite(policy_chosen.grad).all()


# ----------------------------------------------------------------------------------------------------------
# KTO
# ----------------------------------------------------------------------------------------------------------


def test_kto_loss_desirable_and_undesirable_branches() -> None:
    beta, kl = 0.1, 0.2
    # Log-ratios: -1.0 - (-1.5) = 0.5 (desirable) and -2.0 - (-1.0) = -1.0 (undesirable).
    losses, rewards = kto_loss(
        t(-1.0, -2.0),
        t(-1.5, -1.0),
        torch.tensor([True, False]),
        torch.tensor(kl, dtype=torch.float64),
        beta=beta,
        desirable_weight=1.0,
        undesirable_weight=1.5,
    )
    desirable = 1.0 * (1 - sigmoid(0.1 * (0.5 - 0.2)))  # lambda_D - lambda_D * sigma(beta * (r - z0))
    undesirable = 1.5 * (1 - sigmoid(0.1 * (0.2 - -1.0)))  # lambda_U - lambda_U * sigma(beta * (z0 - r))
    assert losses.tolist() == approx([desirable, undesirable])
    assert rewards.tolist() == approx([0.05, -0.1])


def test_kto_reference_point_is_clamped_and_detached() -> None:
    kl = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    losses, _ = kto_loss(t(-1.0), t(-1.5), torch.tensor([True]), kl, beta=0.1)
    # A negative KL estimate is treated as 0: 1 - sigma(0.1 * 0.5).
    assert losses.tolist() == approx([1 - sigmoid(0.05)])
    assert not losses.requires_grad
    with pytest.raises(TypeError, match="bool"):
        kto_loss(t(-1.0), t(-1.5), torch.tensor([1]), torch.tensor(0.0), beta=0.1)


# ----------------------------------------------------------------------------------------------------------
# Reward model
# ----------------------------------------------------------------------------------------------------------


def test_bradley_terry_loss_without_and_with_margin() -> None:
    chosen, rejected = t(1.0, 0.5), t(0.0, 1.5)
    plain = bradley_terry_loss(chosen, rejected)
    # Differences 1.0 and -1.0.
    assert plain.tolist() == approx([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))])
    with_margin = bradley_terry_loss(chosen, rejected, margin=t(0.5, 0.0))
    # Differences minus margin: 0.5 and -1.0.
    assert with_margin.tolist() == approx([math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(1.0))])
    assert with_margin.shape == (2,)


# ----------------------------------------------------------------------------------------------------------
# PPO
# ----------------------------------------------------------------------------------------------------------


def test_ppo_policy_loss_with_clipping() -> None:
    # Token 0: ratio e^0.1 ~ 1.105, A = 1   -> inside [0.8, 1.2], loss -1.105 (not clipped).
    # Token 1: ratio e^0.5 ~ 1.649, A = 2   -> clipped to 1.2, loss max(-3.297, -2.4) = -2.4 (clipped).
    # Token 2: ratio e^-0.7 ~ 0.497, A = -1 -> clipped to 0.8, loss max(0.497, 0.8) = 0.8 (clipped).
    # Token 3: ratio e^0.4 ~ 1.492, A = -1  -> loss max(1.492, 1.2) = 1.492 (pessimistic side, not clipped).
    # Token 4: padding with extreme numbers that must be ignored.
    old = t(-1.0, -1.0, -1.0, -1.0, -1.0).unsqueeze(0)
    logprobs = t(-0.9, -0.5, -1.7, -0.6, 50.0).unsqueeze(0).requires_grad_(True)
    advantages = t(1.0, 2.0, -1.0, -1.0, 1e6).unsqueeze(0)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_fraction = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    token_losses = [-math.exp(0.1), -2 * 1.2, 0.8, math.exp(0.4)]
    assert loss.item() == pytest.approx(sum(token_losses) / 4, rel=REL)
    assert clip_fraction.item() == pytest.approx(2 / 4, rel=REL)
    loss.backward()
    assert logprobs.grad is not None
    # Clipped tokens and padding get no gradient; unclipped ones get -A * ratio / n_tokens.
    assert logprobs.grad[0].tolist() == approx([-math.exp(0.1) / 4, 0.0, 0.0, math.exp(0.4) / 4, 0.0])


def test_ppo_policy_loss_without_clipping() -> None:
    old = t(-1.0, -2.0).unsqueeze(0)
    logprobs = t(-0.95, -2.1).unsqueeze(0)
    advantages = t(0.5, -2.0).unsqueeze(0)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, clip_fraction = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # Ratios e^0.05 and e^-0.1 both inside [0.8, 1.2]: plain -A * ratio.
    expected = (-0.5 * math.exp(0.05) + 2.0 * math.exp(-0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=REL)
    assert clip_fraction.item() == 0.0


def test_ppo_value_loss_with_clipping() -> None:
    # Token 0: V = 1.0 moved 0.5 from old 0.5 -> clipped to 0.7. Errors (1.0 - 1.2)^2 = 0.04 and
    #          (0.7 - 1.2)^2 = 0.25 -> 0.25 (clipped one is larger).
    # Token 1: V = 2.0 moved 0.1 from 1.9 -> within range, both errors (2.0 - 1.0)^2 = 1.0.
    # Token 2: padding.
    values = t(1.0, 2.0, 100.0).unsqueeze(0).requires_grad_(True)
    old_values = t(0.5, 1.9, 0.0).unsqueeze(0)
    returns = t(1.2, 1.0, -100.0).unsqueeze(0)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, clip_fraction = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0) / 2, rel=REL)
    assert clip_fraction.item() == pytest.approx(0.5, rel=REL)
    loss.backward()
    assert values.grad is not None
    # Token 0's loss comes from the clipped value, which no longer depends on V; token 1: 0.5 * 2 * 1.0 / 2.
    assert values.grad[0].tolist() == approx([0.0, 0.5, 0.0])


def test_gae_three_steps_by_hand() -> None:
    gamma, lam = 0.9, 0.8
    rewards = t(0.0, 0.0, 1.0, 7.0).unsqueeze(0)
    values = t(0.5, 0.6, 0.7, 3.0).unsqueeze(0)
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    # The episode ends after token 2, so V(after last) = 0.
    delta2 = 1.0 + gamma * 0.0 - 0.7  # 0.3
    delta1 = 0.0 + gamma * 0.7 - 0.6  # 0.03
    delta0 = 0.0 + gamma * 0.6 - 0.5  # 0.04
    a2 = delta2
    a1 = delta1 + gamma * lam * a2  # 0.03 + 0.72 * 0.3 = 0.246
    a0 = delta0 + gamma * lam * a1  # 0.04 + 0.72 * 0.246 = 0.21712
    assert advantages[0].tolist() == approx([a0, a1, a2, 0.0])
    assert returns[0].tolist() == approx([a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0])


def test_gae_batch_with_different_lengths() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 5.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.2, 0.4, 0.6], [1.0, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # gamma = lam = 1: the return is the plain reward-to-go and the advantage is that minus V.
    assert returns[0].tolist() == approx([1.0, 1.0, 1.0])
    assert advantages[0].tolist() == approx([0.8, 0.6, 0.4])
    # Row 1 is a one-token episode: A = 2.0 - 1.0, and the padded tokens are ignored.
    assert advantages[1].tolist() == approx([1.0, 0.0, 0.0])
    assert returns[1].tolist() == approx([2.0, 0.0, 0.0])


def test_kl_estimators_k1_and_k3() -> None:
    logprobs = t(-1.0, -2.0, -0.3)
    ref_logprobs = t(-1.5, -1.0, -0.3)
    k1 = kl_penalty(logprobs, ref_logprobs, "k1")
    assert k1.tolist() == approx([0.5, -1.0, 0.0])
    k3 = kl_penalty(logprobs, ref_logprobs, "k3")
    # r = exp(ref - logp): e^-0.5, e^1.0, e^0; k3 = (r - 1) - log r.
    expected = [
        (math.exp(-0.5) - 1) - (-0.5),
        (math.exp(1.0) - 1) - 1.0,
        0.0,
    ]
    assert k3.tolist() == approx(expected)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logprobs, ref_logprobs, "k2")  # type: ignore[arg-type]


def test_adaptive_kl_controller_update() -> None:
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    # KL 9.0 is 50% above target; the error is clipped to +0.2. Multiplier 1 + 0.2 * 256 / 10000.
    new = controller.update(current_kl=9.0, n_steps=256)
    first = 0.2 * (1 + 0.2 * 256 / 10000)
    assert new == pytest.approx(first, rel=REL)
    assert controller.kl_coef == pytest.approx(first, rel=REL)
    # KL 5.4 is 10% below target (inside the clip). Multiplier 1 - 0.1 * 1000 / 10000 = 0.99.
    controller.update(current_kl=5.4, n_steps=1000)
    assert controller.kl_coef == pytest.approx(first * 0.99, rel=REL)
    # KL far below target: error clipped to -0.2.
    controller.update(current_kl=0.0, n_steps=10000)
    assert controller.kl_coef == pytest.approx(first * 0.99 * 0.8, rel=REL)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_kl_coef=0.2, target=0.0, horizon=10)


def test_fixed_kl_controller_never_changes() -> None:
    controller = FixedKLController(kl_coef=0.05)
    assert controller.update(current_kl=100.0, n_steps=512) == 0.05
    assert controller.kl_coef == 0.05


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def test_masked_mean() -> None:
    values = torch.tensor([[1.0, 2.0, 30.0], [4.0, 50.0, 60.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(values, mask).item() == pytest.approx((1.0 + 2.0 + 4.0) / 3, rel=REL)
    assert masked_mean(values, mask, dim=1).tolist() == approx([1.5, 4.0])


def test_masked_mean_of_empty_mask_is_zero_with_finite_gradient() -> None:
    values = t(1.0, 2.0).requires_grad_(True)
    result = masked_mean(values, torch.zeros(2, dtype=torch.bool))
    result.backward()
    assert result.item() == 0.0
    assert values.grad is not None
    assert torch.isfinite(values.grad).all()


def test_whiten_normalises_masked_positions() -> None:
    values = t(1.0, 3.0, 100.0).unsqueeze(0)
    mask = torch.tensor([[1, 1, 0]])
    whitened = whiten(values, mask)
    # Mean 2.0, population variance 1.0 over the two valid entries.
    assert whitened[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)
    kept_mean = whiten(values, mask, shift_mean=False)
    assert kept_mean[0].tolist() == pytest.approx([1.0, 3.0, 0.0], abs=1e-6)
