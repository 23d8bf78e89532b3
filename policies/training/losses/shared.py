"""Helpers shared by the preference and RL losses: masked means, whitening, and the shape and argument checks."""

from __future__ import annotations

import torch
from torch import Tensor


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
