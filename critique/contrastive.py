"""Contrastive pairs (RLCD, Yang et al. 2023, arXiv 2307.12950): the policy answers the same prompt under a
principle's positive and negative system prompt, worded as alike as possible; the positive answer is preferred
by construction. The wording comes from the constitution, or from one template when a principle has none.
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
    positive, negative = system_prompts(principle, prompt)
    return ([{"role": "system", "content": positive}, {"role": "user", "content": prompt}],
            [{"role": "system", "content": negative}, {"role": "user", "content": prompt}])
