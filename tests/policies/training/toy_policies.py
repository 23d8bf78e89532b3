"""What the on-policy trainers' tests share: a tiny random policy to learn on, its trainable weights, and a
progress callback that crashes a run at a given step (to test resuming)."""

import torch

from policies.adapters import LoraSettings, attach_trainable_adapter
from policies.models import load_model


def toy_lm(tiny_model_dir, lora: LoraSettings, *, peaked: bool = True, adapter_seed: int | None = None):
    """(LoRA LM, tokenizer): the tiny model re-initialised with an untied head. `peaked`: the head gives
    logits only to tokens 100-131, so the next-token distribution concentrates on them and a reward on one of
    them is seen often enough to act on within a few steps. `adapter_seed` fixes the adapter's random init."""
    from transformers import LlamaForCausalLM

    lm, tokenizer = load_model(tiny_model_dir, device="cpu")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(lm.config.__class__(**{**lm.config.to_dict(), "tie_word_embeddings": False}))
    if peaked:
        with torch.no_grad():
            lm.lm_head.weight.zero_()
            lm.lm_head.weight[100:132] = torch.randn(32, lm.config.hidden_size)
    if adapter_seed is not None:
        torch.manual_seed(adapter_seed)
    return attach_trainable_adapter(lm, lora), tokenizer


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class Crash(Exception):
    pass


def crash_at_step(number: int):
    """A progress callback that raises `Crash` when step `number` reports: after the checkpoints of the steps
    before it, before its own."""

    def on_step(step) -> None:
        if step.step == number:
            raise Crash

    return on_step
