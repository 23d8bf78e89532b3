"""log p(target token) through the output projection, with the (tokens, vocabulary) logits never stored.

The logits of a completion are most of the memory of preference training, and the softmax over the
vocabulary a good share of its time. `projected_logps` computes them chunk by chunk and keeps only each
token's log-normaliser; the backward pass recomputes a chunk's logits and turns them into the gradient in
place (softmax minus one-hot), so no chunk costs more than one (chunk, vocabulary) tensor at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from policies.training.distributed import is_partitioned

LOGIT_CHUNK = 1024
"""Tokens whose logits exist at once: bounds the (tokens, vocabulary) tensor that dominates memory."""


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class _ProjectedLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype):
        logps = torch.empty(targets.shape[0], device=hidden.device, dtype=torch.float32)
        normalisers = torch.empty_like(logps)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, targets.shape[0], LOGIT_CHUNK):
                end = start + LOGIT_CHUNK
                logits = F.linear(hidden[start:end].to(dtype), weight.to(dtype)).float()
                normalisers[start:end] = torch.logsumexp(logits, dim=-1)
                logps[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - normalisers[start:end]
        ctx.save_for_backward(hidden, weight, targets, normalisers)
        ctx.dtype = dtype
        return logps

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, normalisers = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if want_weight else None
        w = weight.to(ctx.dtype)
        for start in range(0, targets.shape[0], LOGIT_CHUNK):
            end = start + LOGIT_CHUNK
            h = hidden[start:end].to(ctx.dtype)
            # d log p(t) / d logits = one_hot(t) - softmax; built in place from the recomputed logits.
            probs = F.linear(h, w).float().sub_(normalisers[start:end, None]).exp_()
            probs.scatter_add_(1, targets[start:end, None], probs.new_full((probs.shape[0], 1), -1.0))
            grad_logits = probs.mul_(-grad[start:end, None]).to(ctx.dtype)
            if want_hidden:
                grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
            if want_weight:
                grad_weight += (grad_logits.t() @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


def _checkpointed_chunk_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.gather(logits, 1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)


def projected_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[target] for each (hidden state (N, H), target (N,)) row, in float32 (N,)."""
    if head.bias is None and not is_partitioned(head.weight):
        return _ProjectedLogps.apply(hidden, head.weight, targets, _compute_dtype(hidden))
    # A biased or partitioned head goes through its own forward, chunk by chunk, recomputed in the backward pass.
    pieces = []
    for start in range(0, targets.shape[0], LOGIT_CHUNK):
        chunk = (head, hidden[start:start + LOGIT_CHUNK], targets[start:start + LOGIT_CHUNK])
        if torch.is_grad_enabled():
            pieces.append(torch.utils.checkpoint.checkpoint(_checkpointed_chunk_logps, *chunk, use_reentrant=False))
        else:
            pieces.append(_checkpointed_chunk_logps(*chunk))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
