"""The RLHF losses: the reward model's Bradley-Terry loss, then PPO's clipped policy and value losses, GAE, the
per-token KL penalty and the KL coefficient's controllers."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from policies.training.losses.shared import _check_same_shape, masked_mean

# --------------------------------------------------------------------------------------------------------
# Reward model
# --------------------------------------------------------------------------------------------------------


def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | None = None
) -> Tensor:
    """Pairwise reward-model loss under the Bradley-Terry model.

    Touvron et al. 2023, "Llama 2", eq. 1 (``-log sigma(r_c - r_r)``) and eq. 2 with a margin
    ``m(r)`` for pairs rated as clearly different: ``-log sigma(r_c - r_r - m)``.

    Args:
        chosen_scores, rejected_scores: ``(batch,)`` scalar rewards from the reward model.
        margin: optional ``(batch,)`` required gap between the two scores.

    Returns:
        ``(batch,)`` per-pair losses.
    """
    _check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    diff = chosen_scores - rejected_scores
    if margin is not None:
        _check_same_shape(chosen_scores=chosen_scores, margin=margin)
        diff = diff - margin
    return -F.logsigmoid(diff)


# --------------------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------------------


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """Clipped surrogate policy loss of PPO.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7:
    ``L^CLIP = E[min(rho * A, clip(rho, 1 - c, 1 + c) * A)]`` with ``rho = exp(logp - logp_old)``; the
    loss is its negation, averaged over the unmasked tokens.

    Args:
        logprobs: ``(batch, seq)`` per-token log-probs under the current policy (with grad).
        old_logprobs: ``(batch, seq)`` log-probs under the policy that sampled the rollout.
        advantages: ``(batch, seq)`` advantage estimates (e.g. from ``gae``).
        mask: ``(batch, seq)`` 1 on response tokens, 0 on prompt and padding.
        clip_range: ``c`` above.

    Returns:
        ``(loss, clip_fraction)``, both scalars. ``clip_fraction`` is the share of tokens where the
        clipped term was the active (larger) loss, i.e. where clipping removed the gradient.
    """
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    # The rollout quantities are constants of the objective.
    old_logprobs, advantages = old_logprobs.detach(), advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask).detach()
    return loss, clip_fraction


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """Clipped value-function loss.

    Not in the PPO paper; this is the variant of OpenAI Baselines' ppo2 that Ziegler et al. 2019 and TRL
    use: the new value may move at most ``clip_range_value`` from the rollout value, and the loss is
    ``0.5 * max((V - R)^2, (V_clipped - R)^2)`` averaged over unmasked tokens.

    Args:
        values: ``(batch, seq)`` value predictions of the current critic (with grad).
        old_values: ``(batch, seq)`` value predictions recorded during the rollout.
        returns: ``(batch, seq)`` return targets (e.g. from ``gae``).
        mask: ``(batch, seq)`` 1 on response tokens.
        clip_range_value: maximum change of the value prediction.

    Returns:
        ``(loss, clip_fraction)``, both scalars; ``clip_fraction`` is the share of tokens where the
        clipped error was the larger one.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    clip_fraction = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask).detach()
    return loss, clip_fraction


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over token sequences.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    eq. 16: ``A_t = sum_l (gamma * lam)^l * delta_{t+l}`` with
    ``delta_t = r_t + gamma * V_{t+1} - V_t``, computed by the backward recursion
    ``A_t = delta_t + gamma * lam * A_{t+1}``.

    Sequences are right-padded: the episode ends at the last position where ``mask`` is set, and the
    value after it is taken as 0 (the response is finished, so nothing follows). Rewards and values at
    masked positions are ignored.

    Args:
        rewards: ``(batch, seq)`` per-token rewards (typically the KL penalty plus the score on the last
            token).
        values: ``(batch, seq)`` value predictions recorded during the rollout.
        mask: ``(batch, seq)`` 1 on response tokens, 0 on padding.
        gamma: discount factor.
        lam: GAE bias/variance trade-off ``lambda``.

    Returns:
        ``(advantages, returns)``, each ``(batch, seq)``, with ``returns = advantages + values`` and both
        zero at masked positions. Not whitened; see ``whiten``.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    weights = mask.to(values.dtype)
    rewards, values = rewards * weights, values * weights
    seq_len = rewards.shape[-1]
    next_value = torch.zeros_like(values[..., 0])
    next_advantage = torch.zeros_like(values[..., 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(seq_len)):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        advantage = (delta + gamma * lam * next_advantage) * weights[..., t]
        advantages[..., t] = advantage
        # Padding carries nothing backwards: its value and advantage are already zero.
        next_value, next_advantage = values[..., t], advantage
    return advantages, (advantages + values) * weights


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: Literal["k1", "k3"] = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    Schulman 2020, "Approximating KL Divergence" (blog note): with ``r = pi_ref(x) / pi(x)``,
    ``k1 = -log r = logp - logp_ref`` (unbiased, high variance, can be negative) and
    ``k3 = (r - 1) - log r`` (unbiased, always >= 0, lower variance).

    Args:
        logprobs: ``(batch, seq)`` per-token log-probs under the policy.
        ref_logprobs: ``(batch, seq)`` per-token log-probs under the reference model.
        estimator: ``"k1"`` or ``"k3"``.

    Returns:
        ``(batch, seq)`` per-token estimates (apply the response mask before summing).
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k3":
        # expm1 keeps precision when the two models nearly agree (r close to 1).
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


class AdaptiveKLController:
    """Adaptive KL coefficient.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2.2:
    ``e_t = clip((KL_t - KL_target) / KL_target, -0.2, 0.2)`` and ``beta_{t+1} = beta_t (1 + K_beta e_t)``.
    The paper uses a constant ``K_beta = 0.1``; here ``K_beta = n_steps / horizon`` so that the rate of
    change does not depend on the batch size (``n_steps / horizon = 0.1`` reproduces the paper).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.kl_coef = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move ``kl_coef`` towards the value that keeps the KL at ``target``; return the new value."""
        error = min(max((current_kl - self.target) / self.target, -0.2), 0.2)
        self.kl_coef *= 1 + error * n_steps / self.horizon
        return self.kl_coef


class FixedKLController:
    """Constant KL coefficient with the same interface as ``AdaptiveKLController``."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns the unchanged coefficient."""
        return self.kl_coef
