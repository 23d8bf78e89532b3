import math

import pytest
import torch
from safetensors.torch import load_file

from policies.adapters import LoraSettings, attach_trainable_adapter, save_adapter
from policies.dpo import DPOSettings, DPOTrainer
from policies.models import load_model
from policies.preference_data import EncodedPair, PreferenceExample, collate, completion_text, encode_pair

EXAMPLES = [
    PreferenceExample([{"role": "user", "content": f"Question {i}?"}], chosen=f"A careful answer {i}.",
                      rejected=f"No {i}.", target=0.8)
    for i in range(6)
]


def test_collate_masks_only_completion_tokens():
    pairs = [EncodedPair([1, 2], [3, 4, 5], [6]), EncodedPair([7], [8], [9, 10])]
    batch = collate(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5], [7, 8, 0, 0, 0],  # chosen halves
        [1, 2, 6, 0, 0], [7, 9, 10, 0, 0],  # rejected halves
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]


def test_completion_includes_the_end_of_turn_marker(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir, device="cpu")
    text = completion_text(tokenizer, [{"role": "user", "content": "Q"}], "Answer.")
    assert text.startswith("Answer.") and "<|im_end|>" in text


def test_truncation_keeps_completions_and_drops_oldest_prompt_tokens(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir, device="cpu")
    long = PreferenceExample([{"role": "user", "content": "word " * 200}], "yes " * 100, "no")
    pair = encode_pair(tokenizer, long, max_length=64)
    assert len(pair.prompt) + len(pair.chosen) <= 64 and len(pair.prompt) + len(pair.rejected) <= 64
    assert len(pair.chosen) == 32


def test_dpo_step_changes_adapter_and_starts_at_log_two(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    settings = DPOSettings(beta=0.1, learning_rate=1e-2, epochs=2, batch_size=4, max_length=64)
    result = DPOTrainer(model, tokenizer, settings).train(EXAMPLES)
    # A fresh LoRA adapter is the identity, so the policy equals the reference: loss = -log sigmoid(0) = log 2.
    assert result.before.loss == pytest.approx(math.log(2), abs=1e-5)
    assert result.before.reward_margin == pytest.approx(0.0, abs=1e-5)
    assert len(result.steps) == 4  # 2 batches x 2 epochs
    assert all(math.isfinite(s.loss) for s in result.steps)
    assert result.after.loss < result.before.loss
    assert result.after.reward_margin > 0
    saved = load_file(save_adapter(model, tmp_path / "v1") / "adapter_model.safetensors")
    lora_b = [t for name, t in saved.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means trained


def test_gradient_accumulation_takes_one_step_per_window(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    settings = DPOSettings(epochs=1, batch_size=2, grad_accum=2, max_length=64)
    result = DPOTrainer(model, tokenizer, settings).train(EXAMPLES)
    assert len(result.steps) == 2  # 3 micro-batches: one full window, then the remainder


def test_reference_is_the_model_with_adapters_disabled(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    base_model, _ = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # make the adapter matter
    trainer = DPOTrainer(model, tokenizer, DPOSettings(max_length=64))
    pairs = [encode_pair(tokenizer, e, 64) for e in EXAMPLES[:2]]
    (ref_chosen,), _ = trainer._logps([pairs], adapter=False)
    (pol_chosen,), _ = trainer._logps([pairs], adapter=True)
    from policies.preference_data import completion_logps
    with torch.no_grad():
        base_chosen, _ = completion_logps(base_model, collate(pairs, tokenizer.pad_token_id))
    assert torch.allclose(ref_chosen, base_chosen, atol=1e-5)
    assert not torch.allclose(pol_chosen, base_chosen, atol=1e-3)


def test_no_pairs_is_a_clear_error(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    with pytest.raises(ValueError, match="at least one preference pair"):
        DPOTrainer(model, tokenizer, DPOSettings()).train([])
