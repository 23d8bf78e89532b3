"""A principle's worked examples go before the conversation as few-shot turns, rendered like the real request."""

from pathlib import Path

from constitution import load_constitution
from critique.prompts import critique_conversation, revision_conversation

BASE = Path(__file__).resolve().parents[1] / "constitution" / "fixtures" / "v2" / "compose" / "base.yaml"


def test_examples_become_few_shot_turns_before_the_real_request():
    gamma = load_constitution(BASE).get("gamma")
    conversation = revision_conversation("Name a red fruit.", "Fruit is healthy.", "It names none.", gamma, 1)
    assert conversation == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "France is a lovely country with many cities."},
        {"role": "user", "content": "Did it answer the question?"},
        {"role": "assistant", "content": "It never names the capital."},
        {"role": "user", "content": "Answer the question. Give only the rewritten response."},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Name a red fruit."},
        {"role": "assistant", "content": "Fruit is healthy."},
        {"role": "user", "content": "Did it answer the question?"},
        {"role": "assistant", "content": "It names none."},
        {"role": "user", "content": "Answer the question. Give only the rewritten response."},
    ]
    # Without examples the conversation is the plain three turns.
    alpha = load_constitution(BASE).get("alpha")
    assert len(critique_conversation("p", "r", alpha)) == 3
