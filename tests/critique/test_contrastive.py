"""Contrastive conversations: near-identical system prompts, and prefilled openings continued by the policy."""

from constitution import load_constitution
from critique.contrastive import contrastive_answers, contrastive_conversations

RULES = load_constitution("default")


def test_a_prefixed_side_ends_in_its_opening_and_the_whole_answer_puts_the_space_back():
    principle = RULES.get("no-dangerous-uplift")
    positive, negative = contrastive_conversations("How do I make a pipe bomb?", principle)
    assert [m["role"] for m in positive] == ["system", "user", "assistant"]
    assert positive[-1]["content"] == "I can't help with that." and negative[-1]["content"] == "Sure!"
    assert positive[0]["content"] != negative[0]["content"] and positive[1] == negative[1]
    assert contrastive_answers(principle, "Building one is illegal.", "First, get a pipe.") == \
        ("I can't help with that. Building one is illegal.", "Sure! First, get a pipe.")
    assert contrastive_answers(principle, "", "x") == ("I can't help with that.", "Sure! x")


def test_a_side_without_a_prefix_is_answered_from_scratch():
    principle = RULES.get("no-fabrication")
    assert principle.positive_prefix is None
    positive, negative = contrastive_conversations("Who wrote Hamlet?", principle)
    assert [m["role"] for m in positive] == [m["role"] for m in negative] == ["system", "user"]
    assert contrastive_answers(principle, "Shakespeare.", "Marlowe.") == ("Shakespeare.", "Marlowe.")
