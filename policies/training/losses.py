"""Preference-learning and RL losses for policy training.

Every function here is a pure function of tensors: no modules, no model access, no optimiser state
(the KL controllers hold one float). Trainers compute the log-probabilities and pass them in.

Conventions shared by the preference losses:

* ``*_logps`` are *sequence* log-probabilities of shape ``(batch,)``: the sum over completion tokens of
  ``log pi(y_t | x, y_<t)``, prompt and padding excluded. Where a paper uses length-averaged
  log-probabilities (SimPO, ORPO) the function takes the summed values plus the lengths and averages
  itself, so callers always pass the same kind of number.
* ``h`` denotes the DPO log-ratio margin
  ``(policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``.
* Losses are returned per example (no reduction) so that callers can weight or mask pairs; rewards are
  returned detached, for logging only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "LossType",
    "bradley_terry_loss",
    "dpo_loss",
    "gae",
    "hinge_loss",
    "ipo_loss",
    "kl_penalty",
    "kto_loss",
    "masked_mean",
    "orpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "robust_dpo_loss",
    "simpo_loss",
    "soft_dpo_loss",
    "whiten",
]


class LossType(StrEnum):
    """Preference-optimisation objectives implemented in this module."""

    DPO = "dpo"
    CDPO = "cdpo"  # conservative DPO: DPO with label smoothing
    IPO = "ipo"
    RDPO = "rdpo"  # robust DPO (Chowdhury et al. 2024), not the length-regularised "R-DPO"
    HINGE = "hinge"
    SIMPO = "simpo"
    ORPO = "orpo"
    KTO = "kto"

    @property
    def needs_reference(self) -> bool:
        """Whether the loss needs log-probabilities from a frozen reference model."""
        return self not in (LossType.SIMPO, LossType.ORPO)

    @property
    def paired(self) -> bool:
        """Whether examples are (chosen, rejected) pairs; KTO uses unpaired good/bad labels."""
        return self is not LossType.KTO


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is set.

    Args:
        values: any shape.
        mask: same shape as ``values``; bool or 0/1 (fractional weights also work).
        dim: reduce over this dimension only; ``None`` reduces everything to a scalar.

    Returns:
        A scalar, or ``values`` with ``dim`` removed. Where the mask is empty the result is 0 rather than
        NaN, so a fully padded row does not poison the batch (and its gradient stays finite).
    """
    _check_same_shape(values=values, mask=mask)
    weights = mask.to(values.dtype)
    if dim is None:
        total, count = (values * weights).sum(), weights.sum()
    else:
        total, count = (values * weights).sum(dim), weights.sum(dim)
    # Dividing by a safe denominator (not torch.where on the quotient) keeps the backward pass NaN-free.
    return total / torch.where(count > 0, count, torch.ones_like(count))


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``values`` to unit variance (and zero mean if ``shift_mean``) over masked positions.

    Shapes: ``values`` and ``mask`` are ``(batch, seq)``; the output has the same shape. Masked-out
    positions are returned as 0. Used to whiten PPO advantages; the mean is restored when
    ``shift_mean`` is False, so only the scale changes.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def _check_same_shape(**tensors: Tensor) -> None:
    # Silent broadcasting of (batch,) against (batch, 1) would turn a per-pair loss into a batch x batch
    # matrix, so mismatched shapes are rejected outright.
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def _check_beta(beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _log_ratio_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(h, chosen_log_ratio, rejected_log_ratio)``, all of shape ``(batch,)``."""
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    return chosen - rejected, chosen, rejected


def _average_logps(logps: Tensor, lengths: Tensor) -> Tensor:
    if (lengths <= 0).any():
        raise ValueError("sequence lengths must be positive")
    return logps / lengths.to(logps.dtype)


# --------------------------------------------------------------------------------------------------------
# Paired preference losses with a reference model
# --------------------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO loss, optionally conservative (cDPO) or with per-pair soft labels.

    Rafailov et al. 2023, "Direct Preference Optimization", eq. 7:
    ``L = -log sigma(beta * h)``. With label smoothing ``eps`` (conservative DPO, Mitchell 2023, "A note
    on DPO with noisy preferences") the label is assumed flipped with probability ``eps``:
    ``L = -(1 - eps) log sigma(beta * h) - eps log sigma(-beta * h)``, i.e. binary cross-entropy of
    ``sigma(beta * h)`` against the target ``1 - eps``.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(batch,)`` summed log-probs under the policy.
        ref_chosen_logps, ref_rejected_logps: ``(batch,)`` summed log-probs under the reference model.
        beta: inverse temperature of the implicit reward (strength of the KL anchor).
        label_smoothing: a float in ``[0, 1]`` for cDPO, or a ``(batch,)`` tensor giving a per-pair
            probability that the label is wrong (soft labels; see ``soft_dpo_loss``). Tensors are not
            range-checked here, to avoid a device sync; ``soft_dpo_loss`` checks its targets.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``; rewards are
        ``beta * (policy - ref)`` and detached.
    """
    _check_beta(beta)
    h, chosen, rejected = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    if isinstance(label_smoothing, Tensor):
        _check_same_shape(h=h, label_smoothing=label_smoothing)
        eps = label_smoothing.to(h.dtype)
    else:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        eps = label_smoothing
    logits = beta * h
    # logsigmoid is the numerically stable form of log(sigma(x)) for large |x|.
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def soft_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    target: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO trained on soft preference labels from an AI judge.

    Constitutional AI (Bai et al. 2022, sec. 4.1) trains on the feedback model's normalised probability
    that a response is better instead of a hard 0/1 label. Here that probability ``p`` is the BCE target
    for ``sigma(beta * h)``: ``L = -p log sigma(beta * h) - (1 - p) log sigma(-beta * h)``, which is
    ``dpo_loss`` with per-pair ``label_smoothing = 1 - p``. ``p = 1`` recovers plain DPO; ``p = 0.5``
    is minimised at ``h = 0`` (no preference).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(batch,)``.
        target: ``(batch,)`` probability in ``[0, 1]`` that "chosen" is the better response.
        beta: as in ``dpo_loss``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``.
    """
    if ((target < 0) | (target > 1)).any():
        raise ValueError("soft-label targets must lie in [0, 1]")
    return dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        label_smoothing=1 - target,
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Identity preference optimisation loss.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    eq. 17: ``L = (h - 1 / (2 * tau))^2`` with ``tau = beta``. The squared loss regresses the margin to a
    fixed target instead of pushing it to infinity, which is what makes IPO resistant to overfitting
    deterministic preferences.

    Given the completion lengths, every log-prob (policy and reference) is first divided by its completion's
    length, as TRL does: the margin is then per token, so ``1 / (2 * beta)`` means the same at any length
    (with summed log-probs the margin scales with length and the target is reached far sooner).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(batch,)``.
        beta: the regularisation ``tau`` of the paper.
        chosen_lengths, rejected_lengths: ``(batch,)`` completion token counts; both or neither.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``.
    """
    _check_beta(beta)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both completion lengths or neither")
    if chosen_lengths is not None and rejected_lengths is not None:
        policy_chosen_logps = _average_logps(policy_chosen_logps, chosen_lengths)
        ref_chosen_logps = _average_logps(ref_chosen_logps, chosen_lengths)
        policy_rejected_logps = _average_logps(policy_rejected_logps, rejected_lengths)
        ref_rejected_logps = _average_logps(ref_rejected_logps, rejected_lengths)
    h, chosen, rejected = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Robust DPO (rDPO) for labels flipped at a known rate ``eps``.

    Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", sec. 3: the de-biased loss
    ``L = ((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 * eps)`` with ``l(h) = -log sigma(beta * h)``.
    Its expectation under random flips equals the clean DPO loss. Unlike cDPO it can be negative for a
    single pair and is undefined at ``eps = 0.5``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(batch,)``.
        beta: as in ``dpo_loss``.
        label_smoothing: the assumed flip rate ``eps``, in ``[0, 0.5)``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    h, chosen, rejected = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    eps = label_smoothing
    logits = beta * h
    losses = ((1 - eps) * -F.logsigmoid(logits) - eps * -F.logsigmoid(-logits)) / (1 - 2 * eps)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hinge loss on the reference-normalised margin: ``L = max(0, 1 - beta * h)``.

    SLiC-HF (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback") puts a
    hinge on the raw log-likelihood margin; the reference-normalised form implemented here is the
    "hinge-norm" loss of RSO (Liu et al. 2024, "Statistical Rejection Sampling Improves Preference
    Optimization"), which is also TRL's ``hinge``. Pairs whose margin already exceeds ``1 / beta`` get no
    gradient.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(batch,)``.
        beta: scale of the margin; the hinge sits at ``h = 1 / beta``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``.
    """
    _check_beta(beta)
    h, chosen, rejected = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1 - beta * h)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


# --------------------------------------------------------------------------------------------------------
# Reference-free paired losses
# --------------------------------------------------------------------------------------------------------


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Simple preference optimisation (SimPO), reference-free.

    Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6:
    ``L = -log sigma(beta / |y_w| * log pi(y_w) - beta / |y_l| * log pi(y_l) - gamma)``.
    ``gamma`` is the *absolute* target reward margin of the paper, the same quantity as TRL's
    ``CPOConfig.simpo_gamma``. The SimPO authors' training configs give ``gamma_beta_ratio = gamma / beta``
    instead; convert with ``gamma = beta * gamma_beta_ratio``.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(batch,)`` *summed* log-probs under the policy.
        chosen_lengths, rejected_lengths: ``(batch,)`` number of completion tokens (positive).
        beta: reward scale.
        gamma: target margin between the length-normalised rewards.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``; rewards are
        ``beta * logps / length`` (the SimPO implicit reward), detached.
    """
    _check_beta(beta)
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    chosen_rewards = beta * _average_logps(policy_chosen_logps, chosen_lengths)
    rejected_rewards = beta * _average_logps(policy_rejected_logps, rejected_lengths)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and for very negative ``x`` (Maechler 2012)."""
    # Clamp so that an average log-prob of exactly 0 (probability 1, infinite odds) stays finite.
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO, reference-free: the NLL of the chosen response plus the weighted odds-ratio term.

    Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model":
    eq. 6 is ``L_ORPO = L_SFT + lambda * L_OR`` and eq. 7 is
    ``L_OR = -log sigma(log(odds(y_w) / odds(y_l)))`` with ``odds(y) = P(y) / (1 - P(y))`` and ``P`` the
    length-normalised likelihood ``exp(mean_t log p(y_t))``. ``L_SFT`` is the chosen response's mean
    token NLL, ``-log pi(y_w) / |y_w|``. The whole of eq. 6 is returned per pair.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(batch,)`` *summed* log-probs under the policy.
        chosen_lengths, rejected_lengths: ``(batch,)`` number of completion tokens (positive).
        beta: the weight ``lambda`` of the odds-ratio term.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``; rewards are
        ``beta * mean log-prob`` as in TRL, detached.
    """
    _check_beta(beta)
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    chosen = _average_logps(policy_chosen_logps, chosen_lengths)
    rejected = _average_logps(policy_rejected_logps, rejected_lengths)
    # log odds(y) = log P - log(1 - P), computed in log space because P is tiny for long sequences.
    log_odds_ratio = (chosen - _log1mexp(chosen)) - (rejected - _log1mexp(rejected))
    losses = -chosen - beta * F.logsigmoid(log_odds_ratio)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


# --------------------------------------------------------------------------------------------------------
# Unpaired preference loss
# --------------------------------------------------------------------------------------------------------


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    is_desirable: Tensor,
    kl_ref_point: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Kahneman-Tversky optimisation loss for unpaired good/bad labels.

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8 (TRL's
    source refers to the same loss as eq. 7):
    with ``r = log pi(y|x) - log pi_ref(y|x)`` and reference point ``z0`` (a KL estimate),
    ``v = lambda_D * sigma(beta * (r - z0))`` for desirable outputs and
    ``v = lambda_U * sigma(beta * (z0 - r))`` for undesirable ones; ``L = lambda_y - v``.

    ``z0`` is detached, as in the paper (no gradient flows through the reference point), and clamped at 0
    as TRL does, because a KL estimate from mismatched pairs can come out slightly negative.

    Args:
        policy_logps, ref_logps: ``(batch,)`` summed log-probs of each completion.
        is_desirable: ``(batch,)`` bool, True for desirable (thumbs-up) completions.
        kl_ref_point: scalar tensor, the batch estimate of ``KL(pi || pi_ref)``.
        beta: reward scale.
        desirable_weight, undesirable_weight: ``lambda_D`` and ``lambda_U``, used to balance classes.

    Returns:
        ``(losses, rewards)``, each ``(batch,)``; rewards are ``beta * r``, detached.
    """
    _check_beta(beta)
    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, is_desirable=is_desirable)
    if is_desirable.dtype != torch.bool:
        raise TypeError(f"is_desirable must be a bool tensor, got {is_desirable.dtype}")
    if kl_ref_point.numel() != 1:
        raise ValueError(f"kl_ref_point must be a scalar, got shape {tuple(kl_ref_point.shape)}")
    log_ratio = policy_logps - ref_logps
    z0 = kl_ref_point.detach().to(log_ratio.dtype).clamp(min=0).reshape(())
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio)))
    losses = torch.where(is_desirable, desirable, undesirable)
    return losses, (beta * log_ratio).detach()


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
