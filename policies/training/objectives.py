"""The preference objectives, registered by `LossType`: each takes one `PairBatch` and does its own plumbing
(which log-probs, which lengths, which labels), so the trainer never branches on the loss.

Which settings each loss reads beyond `beta`, and its default `beta`, live beside the settings
(`settings.LOSS_SETTINGS`), so that validating them needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from policies.training import losses
from policies.training.settings import LossType


@dataclass(frozen=True)
class PairBatch:
    """Everything a preference objective may need about one micro-batch of B pairs, all (B,) unless noted."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    """Summed completion log-probs under the policy (with grad)."""
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    """Completion token counts."""
    target: Tensor
    """The judge's probability that `chosen` is better (soft labels)."""
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    """Summed completion log-probs under the reference, for the objectives that need it."""
    kl_ref_point: Tensor | None = None
    """KTO's reference point: a scalar estimate of KL(policy || reference), for the objectives that need it."""


Output = tuple[Tensor, Tensor, Tensor]
"""(per-pair losses, chosen rewards, rejected rewards), each (B,); rewards detached."""


@dataclass(frozen=True)
class Objective:
    compute: Callable[[PairBatch, Any], Output]
    """(batch, settings) -> output; settings is a PreferenceSettings (read by attribute)."""
    needs_kl_ref_point: bool = False


OBJECTIVES: dict[LossType, Objective] = {}


def register(loss: LossType, **options) -> Callable[[Callable[[PairBatch, Any], Output]], Callable]:
    def add(compute: Callable[[PairBatch, Any], Output]) -> Callable[[PairBatch, Any], Output]:
        OBJECTIVES[loss] = Objective(compute, **options)
        return compute

    return add


def _with_reference(b: PairBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if b.ref_chosen is None or b.ref_rejected is None:
        raise ValueError("this objective needs reference log-probs")
    return b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected


@register(LossType.DPO)
def _dpo(b: PairBatch, s) -> Output:
    if s.soft_labels:
        return losses.soft_dpo_loss(*_with_reference(b), target=b.target, beta=s.effective_beta)
    return losses.dpo_loss(*_with_reference(b), beta=s.effective_beta)


@register(LossType.CDPO)
def _cdpo(b: PairBatch, s) -> Output:
    return losses.dpo_loss(*_with_reference(b), beta=s.effective_beta, label_smoothing=s.label_smoothing)


@register(LossType.RDPO)
def _rdpo(b: PairBatch, s) -> Output:
    return losses.robust_dpo_loss(*_with_reference(b), beta=s.effective_beta, label_smoothing=s.label_smoothing)


@register(LossType.IPO)
def _ipo(b: PairBatch, s) -> Output:
    return losses.ipo_loss(*_with_reference(b), beta=s.effective_beta, chosen_lengths=b.chosen_lengths,
                           rejected_lengths=b.rejected_lengths)


@register(LossType.HINGE)
def _hinge(b: PairBatch, s) -> Output:
    return losses.hinge_loss(*_with_reference(b), beta=s.effective_beta)


@register(LossType.SIMPO)
def _simpo(b: PairBatch, s) -> Output:
    return losses.simpo_loss(b.policy_chosen, b.policy_rejected, b.chosen_lengths, b.rejected_lengths,
                             beta=s.effective_beta, gamma=s.simpo_gamma)


@register(LossType.ORPO)
def _orpo(b: PairBatch, s) -> Output:
    return losses.orpo_loss(b.policy_chosen, b.policy_rejected, b.chosen_lengths, b.rejected_lengths,
                            beta=s.effective_beta)


@register(LossType.KTO, needs_kl_ref_point=True)
def _kto(b: PairBatch, s) -> Output:
    """KTO on the pairs split into desirable (chosen) and undesirable (rejected) examples; a pair's loss is the
    mean of its two examples' losses."""
    if b.kl_ref_point is None:
        raise ValueError("KTO needs a KL reference point")
    ref_chosen, ref_rejected = _with_reference(b)[2:]
    half = b.policy_chosen.shape[0]
    desirable = torch.arange(2 * half, device=b.policy_chosen.device) < half
    per_example, rewards = losses.kto_loss(
        torch.cat([b.policy_chosen, b.policy_rejected]), torch.cat([ref_chosen, ref_rejected]), desirable,
        b.kl_ref_point, beta=s.effective_beta, desirable_weight=s.kto_desirable_weight,
        undesirable_weight=s.kto_undesirable_weight)
    return (per_example[:half] + per_example[half:]) / 2, rewards[:half], rewards[half:]
