"""The trainer levers of the refusal boundary on a tiny in-process model: RPO's NLL term on the chosen answer
against a value computed here from the model's own log-probs, and the completion caps of preference and SFT
data."""

from __future__ import annotations

import pytest
import torch

from policies.adapters import LoraSettings, attach_trainable_adapter
from policies.models import load_model
from policies.training.data import PreferenceExample, encode_pair
from policies.training.preference import PreferenceTrainer
from policies.training.settings import PreferenceSettings, SFTSettings
from policies.training.sft import SFTExample, SFTTrainer

EXAMPLES = [
    PreferenceExample([{"role": "user", "content": f"Question {i}?"}], chosen=f"A careful answer number {i}.",
                      rejected=f"No {i}.", target=0.8)
    for i in range(5)
]


def trained_looking_policy(model_dir):
    """The tiny model with an adapter that is not the identity, the same every call: the policy then differs from
    the reference, so the loss is computed on the policy's own log-probs."""
    model, tokenizer = load_model(model_dir, device="cpu")
    torch.manual_seed(0)
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval(), tokenizer


def chosen_nll_by_hand(model, tokenizer, max_length: int) -> float:
    """Mean over pairs of -log p(chosen | prompt) / |chosen|, from one plain forward pass per pair."""
    values = []
    with torch.no_grad():
        for example in EXAMPLES:
            pair = encode_pair(tokenizer, example, max_length)
            ids = torch.tensor([pair.prompt + pair.chosen])
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            # Token t of the sequence is predicted at position t - 1.
            positions = range(len(pair.prompt) - 1, len(pair.prompt) + len(pair.chosen) - 1)
            total = sum(logps[p, ids[0, p + 1]].item() for p in positions)
            values.append(-total / len(pair.chosen))
    return sum(values) / len(values)


def loss_before_training(model_dir, nll_weight: float) -> dict[str, float]:
    model, tokenizer = trained_looking_policy(model_dir)
    settings = PreferenceSettings(nll_weight=nll_weight, max_steps=1, batch_size=2, max_length=64, eval_pairs=16)
    return PreferenceTrainer(model, tokenizer, settings).fit(EXAMPLES).metrics


def test_the_rpo_term_adds_its_weight_times_the_chosen_nll(tiny_model_dir):
    model, tokenizer = trained_looking_policy(tiny_model_dir)
    nll = chosen_nll_by_hand(model, tokenizer, max_length=64)
    plain = loss_before_training(tiny_model_dir, 0.0)
    rpo = loss_before_training(tiny_model_dir, 0.5)
    assert plain["chosen_nll_before"] == pytest.approx(nll, rel=1e-4)
    assert rpo["loss_before"] == pytest.approx(plain["loss_before"] + 0.5 * nll, rel=1e-4)
    assert rpo["loss_before"] > plain["loss_before"] + 1.0  # the term is there, not lost in the tolerance


def test_max_completion_length_keeps_each_answers_first_tokens(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir, device="cpu")
    example = PreferenceExample([{"role": "user", "content": "Q?"}], "one two three four five six", "a b c d e f")
    full = encode_pair(tokenizer, example, max_length=64)
    cut = encode_pair(tokenizer, example, max_length=64, max_completion_length=3)
    assert len(full.chosen) > 3 and len(full.rejected) > 3
    assert (cut.prompt, cut.chosen, cut.rejected) == (full.prompt, full.chosen[:3], full.rejected[:3])
    assert encode_pair(tokenizer, example, max_length=64, max_completion_length=100) == full


def test_sft_max_completion_length_keeps_each_responses_first_tokens(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    examples = [SFTExample([{"role": "user", "content": "Q?"}], "I cannot help with that, but here is more."),
                SFTExample([{"role": "user", "content": "R?"}], "No.")]
    full = SFTTrainer(model, tokenizer, SFTSettings(max_length=64)).encode(examples)
    cut = SFTTrainer(model, tokenizer, SFTSettings(max_length=64, max_completion_length=4)).encode(examples)
    assert len(full[0][1]) > 4
    assert cut == [(prompt, completion[:4]) for prompt, completion in full]
    assert [len(c) for _, c in cut] == [4, min(4, len(full[1][1]))]
