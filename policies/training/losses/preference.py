"""The preference losses: the DPO family against a reference model, the reference-free SimPO and ORPO, and
the unpaired KTO (conventions in the package docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from policies.training.losses.shared import _average_logps, _check_beta, _check_same_shape, _log_ratio_margin


def chosen_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """RPO's term (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's ``rpo_alpha``): the
    chosen answer's negative log-likelihood per token, ``-logp(y_w | x) / |y_w|``, per pair.

    Added to a preference loss with a weight, it raises the chosen answer's probability, which DPO alone may
    lower along with the rejected one's when the chosen side is off-policy.
    """
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths)
    return -policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)


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
