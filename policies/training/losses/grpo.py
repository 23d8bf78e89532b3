"""The GRPO family: group-relative advantages and the clipped, critic-free policy loss of GRPO, Dr. GRPO, DAPO,
BNPO and GSPO.

The definitions follow TRL's ``GRPOTrainer`` (``trl==1.16.0``, ``_generate_and_score_completions`` for the
advantages and ``_compute_loss`` for the loss), which is what the trainers here are checked against; where the
papers and TRL differ the docstrings say so. Rewards and advantages are rollout quantities: they are computed
without grad and detached where they enter the loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from policies.training.losses.rl import kl_penalty
from policies.training.losses.shared import _check_same_shape, masked_mean

RewardScale = Literal["group", "batch", "none"]
RatioLevel = Literal["token", "sequence"]
Aggregation = Literal["grpo", "dr_grpo", "dapo", "bnpo"]

# --------------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def group_advantages(
    rewards: Tensor, group_size: int, scale: RewardScale = "group", eps: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages: each completion's reward minus the mean reward of its prompt's group.

    Shao et al. 2024, "DeepSeekMath", sec. 4.1.2 (outcome supervision): ``A_i = (r_i - mean(r)) / std(r)``
    over the ``G`` completions of one prompt. ``scale`` picks the denominator:

    * ``"group"``: the group's std (GRPO as published; TRL's ``scale_rewards="group"``);
    * ``"batch"``: the std of every reward in the batch, the centring staying per group (TRL's
      ``scale_rewards="batch"``);
    * ``"none"``: no division (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training", which shows
      that dividing by the std weights the prompts that are too easy or too hard more).

    The std is the unbiased *sample* std (Bessel's correction, ``/ (G - 1)``), as TRL's ``nanstd`` and
    ``torch.std`` compute it, and ``eps`` is added to it (not to the variance), as TRL does; a group of one
    completion (or a batch of one) has std 0, as in TRL.

    Args:
        rewards: ``(n,)`` scalar rewards, ordered as ``n / group_size`` consecutive groups of ``group_size``
            completions of the same prompt.
        group_size: ``G``, completions per prompt; must divide ``n``.
        scale: ``"group"``, ``"batch"`` or ``"none"``.
        eps: added to the std before dividing.

    Returns:
        ``(advantages, zero_spread)``: ``(n,)`` advantages in the dtype of ``rewards``, and ``(n / G,)`` bool,
        True for the groups whose rewards are all equal. Such a group's advantages are exactly 0 whatever the
        scale (they are set to 0, so float rounding of the mean cannot leave a residue): it carries no
        learning signal, and trainers log the share of such groups (TRL's ``frac_reward_zero_std``, which
        tests the std with ``isclose`` where this tests the rewards for equality).
    """
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor, got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size must be >= 1 and divide the {rewards.numel()} rewards, got {group_size}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"unknown scale {scale!r}; expected 'group', 'batch' or 'none'")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite")
    rewards = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped)
        advantages = advantages / (std + eps)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros_like(rewards[0])
        advantages = advantages / (std + eps)
    zero_spread = (grouped == grouped[:, :1]).all(dim=1)
    advantages = torch.where(zero_spread.unsqueeze(1), torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1), zero_spread


# --------------------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------------------


def grpo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    level: RatioLevel = "token",
    aggregation: Aggregation = "grpo",
    max_completion_length: int | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    num_tokens: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss of GRPO and its variants, with an optional per-token KL to the reference.

    Shao et al. 2024, "DeepSeekMath", eq. 3: per token,
    ``L_it = -min(rho_it * A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_it``, with one
    advantage ``A_i`` per completion broadcast over its tokens, ``KL_it`` the k3 estimator of eq. 4
    (``exp(ref - logp) - (ref - logp) - 1``, see ``kl_penalty``) added to the loss as TRL does, and the two
    clip bounds of DAPO's clip-higher (Yu et al. 2025, "DAPO", sec. 3.1). The ratio is

    * ``level="token"``: ``rho_it = exp(logp_it - old_it)`` (PPO's per-token ratio);
    * ``level="sequence"``: GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"), the
      length-normalised sequence ratio ``s_i = exp(mean_t(logp_it - old_it))`` over the completion's tokens,
      the same for every token of completion ``i``. As in TRL's ``importance_sampling_level="sequence"``, the
      mean is taken with grad and then broadcast, so each token's log-prob receives ``1 / |y_i|`` of the
      sequence's gradient.

    ``aggregation`` reduces ``L_it`` over the masked tokens (``|y_i|`` tokens in completion ``i``, ``B`` rows):

    * ``"grpo"``: ``mean_i (sum_t L_it / |y_i|)`` (eq. 3); a row with no tokens counts as 0 in the mean.
    * ``"dr_grpo"``: ``sum_it L_it / (B * max_completion_length)`` (Dr. GRPO's constant normaliser).
    * ``"bnpo"``: ``sum_it L_it / sum_i |y_i|`` over this (micro-)batch.
    * ``"dapo"``: ``sum_it L_it / num_tokens`` (DAPO's token-level policy-gradient loss, sec. 3.3). DAPO
      divides by the tokens of the whole generation batch; TRL divides by ``num_items_in_batch /
      num_processes * grad_accum_steps / steps_per_generation``, the (mean) token count of one process's
      gradient-accumulation window, and then does not divide by the accumulation steps (DDP averages over
      processes). The caller passes that normaliser as ``num_tokens``; ``None`` means this batch's token
      count (then it equals ``"bnpo"``).

    Nothing here divides by the number of gradient-accumulation steps: TRL does that for ``grpo``,
    ``dr_grpo`` and ``bnpo`` (not ``dapo``), and it is left to the caller.

    Args:
        logprobs: ``(batch, seq)`` per-token log-probs under the current policy (with grad).
        old_logprobs: ``(batch, seq)`` log-probs under the policy that sampled the completions.
        advantages: ``(batch,)`` one advantage per completion (e.g. from ``group_advantages``).
        mask: ``(batch, seq)`` 1 on completion tokens, 0 on prompt and padding.
        clip_low, clip_high: ``eps_low`` and ``eps_high`` above.
        level: ``"token"`` or ``"sequence"`` importance ratio.
        aggregation: ``"grpo"``, ``"dr_grpo"``, ``"dapo"`` or ``"bnpo"``.
        max_completion_length: the generation limit; required by ``"dr_grpo"``.
        ref_logprobs: ``(batch, seq)`` log-probs under the reference model; required when ``beta > 0``.
        beta: KL coefficient (>= 0).
        num_tokens: ``"dapo"``'s normaliser (> 0); ignored by the other aggregations.

    Returns:
        ``(loss, metrics)``: the scalar loss, and detached scalars ``clip_fraction_low`` (share of masked
        tokens with ``rho < 1 - eps_low`` and ``A < 0``), ``clip_fraction_high`` (``rho > 1 + eps_high`` and
        ``A > 0``), ``clip_fraction`` (their sum) and ``kl`` (masked mean of the per-token k3 when
        ``ref_logprobs`` is given, else 0). TRL's ``clip_ratio`` metrics count sequences, not tokens, at
        ``level="sequence"``; these always count tokens.
    """
    _check_policy_inputs(logprobs, old_logprobs, advantages, mask, ref_logprobs)
    _check_options(level, aggregation, max_completion_length, ref_logprobs, beta, num_tokens)
    # The rollout quantities are constants of the objective.
    old_logprobs, adv = old_logprobs.detach(), advantages.detach().unsqueeze(1)
    log_ratio = logprobs - old_logprobs
    if level == "sequence":
        log_ratio = masked_mean(log_ratio, mask, dim=-1).unsqueeze(1).expand_as(logprobs)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    kl = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if ref_logprobs is not None:
        per_token_kl = kl_penalty(logprobs, ref_logprobs.detach(), "k3")
        if beta > 0:
            per_token = per_token + beta * per_token_kl
        kl = masked_mean(per_token_kl, mask).detach()
    loss = _aggregate(per_token, mask, aggregation, max_completion_length, num_tokens)
    low = masked_mean(((ratio < 1 - clip_low) & (adv < 0)).to(logprobs.dtype), mask).detach()
    high = masked_mean(((ratio > 1 + clip_high) & (adv > 0)).to(logprobs.dtype), mask).detach()
    metrics = {"clip_fraction_low": low, "clip_fraction_high": high, "clip_fraction": low + high, "kl": kl}
    return loss, metrics


def _aggregate(
    per_token: Tensor,
    mask: Tensor,
    aggregation: Aggregation,
    max_completion_length: int | None,
    num_tokens: float | None,
) -> Tensor:
    """Reduce ``(batch, seq)`` per-token losses to a scalar as ``grpo_policy_loss`` documents."""
    if aggregation == "grpo":
        return masked_mean(per_token, mask, dim=-1).mean()
    weights = mask.to(per_token.dtype)
    total = (per_token * weights).sum()
    if aggregation == "dr_grpo":
        return total / (per_token.shape[0] * max_completion_length)
    if aggregation == "dapo" and num_tokens is not None:
        return total / num_tokens
    # bnpo, and dapo without a caller-given count; clamped like TRL so an all-padding batch gives 0.
    return total / weights.sum().clamp(min=1.0)


def _check_policy_inputs(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, ref_logprobs: Tensor | None
) -> None:
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if ref_logprobs is not None:
        _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (batch, seq), got shape {tuple(logprobs.shape)}")
    if tuple(advantages.shape) != (logprobs.shape[0],):
        raise ValueError(f"advantages must be ({logprobs.shape[0]},), one per row, got {tuple(advantages.shape)}")


def _check_options(
    level: str,
    aggregation: str,
    max_completion_length: int | None,
    ref_logprobs: Tensor | None,
    beta: float,
    num_tokens: float | None,
) -> None:
    if level not in ("token", "sequence"):
        raise ValueError(f"unknown level {level!r}; expected 'token' or 'sequence'")
    if aggregation not in ("grpo", "dr_grpo", "dapo", "bnpo"):
        raise ValueError(f"unknown aggregation {aggregation!r}; expected 'grpo', 'dr_grpo', 'dapo' or 'bnpo'")
    if aggregation == "dr_grpo" and (max_completion_length is None or max_completion_length <= 0):
        raise ValueError(f"dr_grpo needs a positive max_completion_length, got {max_completion_length}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs for the KL term")
    if num_tokens is not None and num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
