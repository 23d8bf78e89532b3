"""LoRA linear layers as one autograd function: y = x W^T (+ bias) + s (x A^T) B^T, exact.

PEFT computes the update as `result + lora_B(lora_A(x)) * scaling`: besides the matmuls, a multiply and an add
that each pass over the whole (tokens, out) output, and in the backward pass another multiply over the output's
gradient and an add of the input's two gradients. On a CPU those passes are a few percent of a training step and
their temporaries a large share of its peak memory. Here the update is accumulated into the base output by the
GEMM itself (`addmm` with alpha = s) and the input's gradient likewise; the scaling touches only rank-r tensors.

`use_fused_lora` switches a PEFT model's LoRA linear layers to this forward. A layer that is not plain LoRA at
the moment of the call (adapter disabled or merged, dropout, several adapters, DoRA or another variant, mixed
dtypes, autocast, trainable base weights, DeepSpeed ZeRO-3 shards) runs PEFT's own forward.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from policies.training.distributed import is_partitioned


def _lora_linear(x, weight, bias, lora_a, lora_b, scaling, in_place: bool = False):
    """(output, x as rows, x A^T): the base output plus the update, accumulated by the GEMM (alpha = scaling)."""
    flat = x.reshape(-1, x.shape[-1])
    down = flat @ lora_a.t()  # (tokens, r)
    base = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
    # With gradients, out of place: under selective checkpointing `base` may be a kept activation.
    out = base.addmm_(down, lora_b.t(), alpha=scaling) if in_place else torch.addmm(base, down, lora_b.t(),
                                                                                      alpha=scaling)
    return out.reshape(*x.shape[:-1], out.shape[-1]), flat, down


class _LoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        out, flat, down = _lora_linear(x, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(flat, weight, lora_a, lora_b, down)
        ctx.scaling, ctx.input_shape = scaling, x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        flat, weight, lora_a, lora_b, down = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        grad_down = (grad @ lora_b).mul_(ctx.scaling)  # (tokens, r)
        grad_b = (grad.t() @ down).mul_(ctx.scaling)
        grad_a = grad_down.t() @ flat
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).addmm_(grad_down, lora_a).reshape(ctx.input_shape)
        return grad_x, None, None, grad_a, grad_b, None


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear` (same parameters, state dict and adapter files) with the fused forward."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts = self._plain_lora_parts(x) if not (args or kwargs) else None
        if parts is None:
            return super().forward(x, *args, **kwargs)
        if not torch.is_grad_enabled():  # evaluation and reference passes: nothing to save, nothing to keep
            return _lora_linear(x, *parts, in_place=True)[0]
        return _LoraLinearFunction.apply(x, *parts)

    def _plain_lora_parts(self, x: torch.Tensor):
        """(weight, bias, A, B, scaling) when this call is plain LoRA on frozen, local weights; else None."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or not isinstance(self.lora_dropout[name],
                                                                                   torch.nn.Identity):
            return None
        base = self.get_base_layer()
        tensors = [base.weight, self.lora_A[name].weight, self.lora_B[name].weight]
        frozen = [base.weight] + ([base.bias] if base.bias is not None else [])
        if (torch.is_autocast_enabled(x.device.type) or any(t.dtype != x.dtype for t in tensors)
                or any(p.requires_grad for p in frozen) or any(is_partitioned(p) for p in tensors)):
            return None
        return base.weight, base.bias, tensors[1], tensors[2], self.scaling[name]


def use_fused_lora(model: torch.nn.Module) -> int:
    """Switch every PEFT LoRA linear layer of `model` to the fused forward; returns how many were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            switched += 1
    return switched
