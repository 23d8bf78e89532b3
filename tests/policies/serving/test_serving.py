import pytest
import torch

from policies.models import load_model
from policies.serving import SamplingParams
from policies.serving.transformers_backend import TransformersGenerator

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a long and detailed list of every colour you can name, please."}],
    [{"role": "user", "content": "What is two plus two?"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


def test_batched_greedy_generation_matches_one_at_a_time(tiny):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=8)
    batched = TransformersGenerator(model, tokenizer, name="t", batch_size=3).generate(CONVERSATIONS, params)
    single = TransformersGenerator(model, tokenizer, name="t", batch_size=1).generate(CONVERSATIONS, params)
    # Left padding and length sorting must not change any answer, nor its position in the output.
    assert batched == single
    assert all(isinstance(text, str) for text in batched)


def test_progress_counts_every_item(tiny):
    model, tokenizer = tiny
    seen = []
    TransformersGenerator(model, tokenizer, name="t", batch_size=2).generate(
        CONVERSATIONS, SamplingParams(max_new_tokens=2), seen.append)
    assert sum(seen) == len(CONVERSATIONS)


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, name="t")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    assert generator.generate(CONVERSATIONS, params) == generator.generate(CONVERSATIONS, params)


def test_choice_logprobs_match_a_full_forward_pass(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, name="t", batch_size=2)
    scores = generator.choice_logprobs(CONVERSATIONS, ["A", "B"])
    ids = [tokenizer("A", add_special_tokens=False)["input_ids"][0],
           tokenizer("B", add_special_tokens=False)["input_ids"][0]]
    for conversation, got in zip(CONVERSATIONS, scores, strict=True):
        encoded = tokenizer(generator.render(conversation), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits[0, -1]
        expected = torch.log_softmax(logits, -1)[ids].tolist()
        assert got == pytest.approx(expected, abs=1e-4)


def test_multi_token_choices_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="must be 1 token"):
        TransformersGenerator(model, tokenizer, name="t").choice_logprobs(CONVERSATIONS[:1], ["Response A", "B"])


def test_a_final_assistant_message_is_continued(tiny):
    model, tokenizer = tiny
    generator = TransformersGenerator(model, tokenizer, name="t")
    rendered = generator.render([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is"}])
    assert rendered.endswith("The answer is")
