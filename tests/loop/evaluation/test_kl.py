"""The KL estimator against the exact KL over a tiny model's full vocabulary (every continuation enumerated)."""

import contextlib
import itertools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from loop.evaluation.kl import completion_kls, token_kl
from policies.training.data import collate_sequences

VOCAB = 12
PROMPT = [1, 5, 7, 3]


@pytest.fixture(scope="module")
def policy_and_reference():
    """A 12-token Llama with a LoRA adapter whose B matrices are random: adapter on = new, off = reference."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.5)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    return model.eval()


def sequence_logprob(model, sequences: list[list[int]]) -> torch.Tensor:
    """log p(continuation | PROMPT) for each sequence, from the plain forward pass (independent of kl.py)."""
    ids = torch.tensor([PROMPT + s for s in sequences])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    start = len(PROMPT)
    picked = logp[:, start - 1:-1].gather(2, ids[:, start:].unsqueeze(-1)).squeeze(-1)
    return picked.sum(-1)


def estimate(model, sequences):
    batch = collate_sequences([PROMPT] * len(sequences), sequences, pad_id=0)
    kls = completion_kls(model, iter([batch]), contextlib.nullcontext, {"ref": model.disable_adapter})
    return torch.tensor(kls["ref"], dtype=torch.float64)


def test_one_token_is_the_exact_kl_of_the_next_token(policy_and_reference):
    model = policy_and_reference
    continuations = [[v] for v in range(VOCAB)]
    new = sequence_logprob(model, continuations).double()
    with model.disable_adapter():
        ref = sequence_logprob(model, continuations).double()
    exact = float((new.exp() * (new - ref)).sum())
    assert exact > 0.05  # the adapter really moves the distribution
    values = estimate(model, [[0]])  # the per-position KL does not depend on which token was sampled
    assert float(values[0]) == pytest.approx(exact, rel=1e-4)


def test_expected_estimate_equals_the_exact_sequence_kl(policy_and_reference):
    """Over every 3-token continuation (12^3 = 1728), E_{y~new}[estimate(y)] = KL(new || ref) exactly."""
    model = policy_and_reference
    continuations = [list(y) for y in itertools.product(range(VOCAB), repeat=3)]
    new = sequence_logprob(model, continuations).double()
    with model.disable_adapter():
        ref = sequence_logprob(model, continuations).double()
    assert float(new.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    exact = float((new.exp() * (new - ref)).sum())
    expected_estimate = float((new.exp() * estimate(model, continuations)).sum())
    assert expected_estimate == pytest.approx(exact, rel=1e-4)
    # The single-token log-ratio (k1) has the same expectation; the full-vocabulary estimate has less variance.
    k1 = new - ref
    assert float((new.exp() * k1).sum()) == pytest.approx(exact, rel=1e-6)
    variance = lambda x: float((new.exp() * (x - exact) ** 2).sum())  # noqa: E731
    assert variance(estimate(model, continuations)) < variance(k1)


def test_token_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    logp = torch.log_softmax(torch.randn(5, VOCAB), -1)
    assert torch.allclose(token_kl(logp, logp), torch.zeros(5), atol=1e-6)
    assert (token_kl(logp, torch.log_softmax(torch.randn(5, VOCAB), -1)) > 0).all()
