"""Contrastive pairs (RLCD, Yang et al. 2023, arXiv 2307.12950): the policy answers the same prompt under a
principle's positive and negative system prompt, worded as alike as possible; the positive answer is preferred
by construction. The wording comes from the constitution, or from one template when a principle has none.

A principle may also fix how each side's answer opens (`positive_prefix`, `negative_prefix`): the policy
continues a prefilled opening, which separates the two sides where instructions alone barely move a small model.
"""

from __future__ import annotations

from constitution import Principle
from policies.serving import Conversation

TEMPLATE = "You are a chat assistant. Your replies are always the {side} answer to this question: {question}"


def system_prompts(principle: Principle, prompt: str) -> tuple[str, str]:
    """(positive, negative) system prompts of `principle` for `prompt`."""
    if principle.positive_system_prompt and principle.negative_system_prompt:
        return (principle.render("positive_system_prompt", prompt=prompt),
                principle.render("negative_system_prompt", prompt=prompt))
    question = principle.render("comparison_question", prompt=prompt)
    return TEMPLATE.format(side="best", question=question), TEMPLATE.format(side="worst", question=question)


def contrastive_conversations(prompt: str, principle: Principle) -> tuple[Conversation, Conversation]:
    """(positive, negative) conversations; a side with a prefix ends in that assistant opening, to be continued."""
    positive, negative = system_prompts(principle, prompt)
    return (steered_conversation(positive, prompt, principle.positive_prefix),
            steered_conversation(negative, prompt, principle.negative_prefix))


def steered_conversation(system: str, prompt: str, prefix: str | None) -> Conversation:
    conversation: Conversation = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    if prefix:
        conversation.append({"role": "assistant", "content": prefix})
    return conversation


def contrastive_answers(principle: Principle, positive: str, negative: str) -> tuple[str, str]:
    """The whole (positive, negative) answers: each side's prefix, if any, then what the policy wrote after it.

    Generators return replies stripped, so the space the continuation's first token carried is put back.
    """
    return with_prefix(principle.positive_prefix, positive), with_prefix(principle.negative_prefix, negative)


def with_prefix(prefix: str | None, continuation: str) -> str:
    if not prefix:
        return continuation
    return f"{prefix} {continuation}" if continuation else prefix
