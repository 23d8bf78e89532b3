"""What gradient checkpointing keeps for the backward pass, and so what it recomputes.

`full` keeps only each decoder layer's input and reruns the whole layer in the backward pass: the least memory,
about one extra forward pass of compute. `selective` also keeps the output of every linear projection in the layer
(the frozen base projections and LoRA's rank-r A; not LoRA's B, which its rank-r matmul recomputes from A's
output cheaply) and of the fused attention kernels, so the rerun skips the matmuls and attention, nearly all of a
layer's compute, and redoes only norms, rotary embeddings, activation functions and rank-r products.
`benchmarks/checkpointing_modes.py` measures the three (SmolLM2-135M, LoRA, DPO steps of 4 pairs of 256 tokens a
side, 2 CPU threads): median step and peak RSS off 10.9 s / 4.9 GB, full 13.0 s / 2.6 GB, selective 10.3 s /
3.8 GB.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from policies.training.settings import Checkpointing

_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
_ATTENTION = tuple(getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"))


def kept_projection_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights whose matmul outputs `selective` keeps: every linear layer's but LoRA's B."""
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".lora_B." not in f".{name}."]


def _keep_projection_outputs(weights: list[torch.nn.Parameter]):
    # Addresses are read per checkpointed call, not once: a later move to another device changes them.
    kept = {w.data_ptr() for w in weights}

    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        if op in _MATMULS and args[-1].data_ptr() in kept:  # mm(x, W^T) or addmm(bias, x, W^T)
            return CheckpointPolicy.MUST_SAVE
        if op in _ATTENTION:  # fused kernels: an output as small as a projection's, and slow to recompute
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def checkpointing_kwargs(model: torch.nn.Module, mode: Checkpointing) -> dict[str, Any]:
    """`gradient_checkpointing_kwargs` for transformers' `gradient_checkpointing_enable` in `mode` (not off)."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = functools.partial(_keep_projection_outputs, kept_projection_weights(model))
    return kwargs
