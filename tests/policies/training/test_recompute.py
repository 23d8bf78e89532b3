"""Gradient checkpointing modes: the same gradients, and the backward pass recomputes what the mode says."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.utils._python_dispatch import TorchDispatchMode

from policies.adapters import LoraSettings, attach_trainable_adapter
from policies.models import load_model
from policies.training.optimization import TrainingLoop
from policies.training.ppo import PolicyWithValue
from policies.training.reward_model import RewardModel
from policies.training.settings import OptimSettings

MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.matmuls = self.attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.matmuls += func in MATMULS
        self.attention += func is ATTENTION
        return func(*args, **(kwargs or {}))


def backward_ops(tiny_model_dir, mode: str) -> tuple[CountOps, dict[str, torch.Tensor], int]:
    """(ops run by the backward pass, the LoRA gradients, LoRA layers) for one batch of the tiny Llama."""
    torch.manual_seed(0)
    lm, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    model = attach_trainable_adapter(lm, LoraSettings(r=4, alpha=8))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    TrainingLoop(model, OptimSettings(gradient_checkpointing=mode)).model.train()
    # Checkpointing makes the embeddings' output require grad (so the first layer's input gets a gradient): the
    # same in every mode, so the counts differ only by what is recomputed.
    model.enable_input_require_grads()
    ids = torch.randint(0, 100, (2, 9))
    loss = model(input_ids=ids, labels=ids).loss
    with CountOps() as counter:
        loss.backward()
    lora_layers = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    return counter, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, lora_layers


def test_every_mode_gives_the_same_gradients_and_recomputes_what_it_says(tiny_model_dir):
    off, off_grads, lora_layers = backward_ops(tiny_model_dir, "off")
    assert lora_layers == 14 and off.attention == 0  # 2 layers x 7 projections; attention's backward is its own op
    for mode, matmuls, attention in (("full", 3, 2), ("selective", 1, 0)):
        ops, grads, _ = backward_ops(tiny_model_dir, mode)
        assert grads.keys() == off_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, off_grads[name])
        # full reruns each LoRA layer's three matmuls (base, A, B) and each layer's attention; selective kept
        # the base's and A's outputs and attention's, and reruns only B's rank-r matmul.
        assert (ops.matmuls - off.matmuls, ops.attention) == (matmuls * lora_layers, attention), mode


@pytest.mark.parametrize("wrap", [RewardModel.fresh, PolicyWithValue], ids=["reward_model", "ppo"])
def test_the_reward_and_value_wrappers_checkpoint_their_language_model(tiny_model_dir, wrap):
    lm, _ = load_model(tiny_model_dir, dtype="float32", device="cpu")
    lm = attach_trainable_adapter(lm, LoraSettings(r=4, alpha=8))
    assert not lm.is_gradient_checkpointing
    TrainingLoop(wrap(lm), OptimSettings(gradient_checkpointing="selective"))
    assert lm.is_gradient_checkpointing


@pytest.mark.parametrize(("given", "mode"), [(True, "full"), (False, "off"), ("selective", "selective")])
def test_booleans_keep_their_old_meaning(given, mode):
    assert OptimSettings(gradient_checkpointing=given).gradient_checkpointing == mode


def test_an_unknown_mode_is_rejected():
    with pytest.raises(ValidationError, match="gradient_checkpointing"):
        OptimSettings(gradient_checkpointing="some")
