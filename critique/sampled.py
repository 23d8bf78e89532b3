"""Best-of-K pairs (`pairs.source: sampled`): K answers per prompt from π_i, some under a principle's steering
so that there is something to pick from, each scored by the rewards; the best over the worst.

The policy's own samples rarely refuse a harmful request (or needlessly refuse a benign one), so on-policy
best-of-K alone has little spread until the policy is warmed up. A `positive` answer continues the principle's
positive system prompt and prefix, a `negative` one its negative ones (as in RLCD, `critique.contrastive`); the
reward, not the construction, decides which answer is better, so a steered answer that misses the principle's
checks loses like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from constitution import Principle
from critique.contrastive import steered_conversation, system_prompts, with_prefix
from policies.serving import Conversation

Steering = Literal["plain", "positive", "negative"]
STEERINGS: tuple[Steering, ...] = ("plain", "positive", "negative")
"""In tie-break order: among answers with equal rewards the on-policy (plain) one is kept as best and worst."""


def steering_plan(k: int, positive: int, negative: int) -> list[Steering]:
    """The steering of each of a prompt's K answers: plain first, then positive, then negative."""
    return ["plain"] * (k - positive - negative) + ["positive"] * positive + ["negative"] * negative


def steers(steering: Steering, candidates: Sequence[Principle] = ()):
    """Which principles can steer this way: those with the side's prefix (it fixes how the answer opens), and
    among them those that declare checks when any of `candidates` (the principles the prompt may draw) does: a
    steered answer is there to give the reward spread, and a checked principle's prefix is what its checks grade
    (a refusal prefix on a benign request fails `refuses: false`; a lecture prefix fails no check)."""
    if steering == "plain":
        return None

    def prefixed(p: Principle) -> bool:
        return bool(p.positive_prefix if steering == "positive" else p.negative_prefix)

    if any(prefixed(p) and p.checks is not None for p in candidates):
        return lambda p: prefixed(p) and p.checks is not None
    return prefixed


def conversation(prompt: str, steering: Steering, principle: Principle | None) -> Conversation:
    """The conversation an answer is generated from: the plain request, or the principle's steering context."""
    if steering == "plain" or principle is None:
        return [{"role": "user", "content": prompt}]
    positive, negative = system_prompts(principle, prompt)
    if steering == "positive":
        return steered_conversation(positive, prompt, principle.positive_prefix)
    return steered_conversation(negative, prompt, principle.negative_prefix)


def answer_text(steering: Steering, principle: Principle | None, continuation: str) -> str:
    """The whole answer: the steering prefix, if any, then what the policy wrote after it."""
    if steering == "plain" or principle is None:
        return continuation
    return with_prefix(principle.positive_prefix if steering == "positive" else principle.negative_prefix, continuation)


class AnswerRow(Protocol):
    id: int
    index: int
    steering: str
    principle_id: str | None
    text: str
    reward: float | None


def best_and_worst(answers: Sequence[AnswerRow], margin: float) -> tuple[AnswerRow, AnswerRow] | str:
    """(best, worst) of a prompt's scored answers, or why there is no pair: "unscored" (fewer than two answers
    with a reward) or "no-spread" (the rewards differ by less than `margin`). Ties go to the earlier steering in
    STEERINGS, then the lower index, so an on-policy answer is preferred on both sides."""
    scored = sorted((a for a in answers if a.reward is not None),
                    key=lambda a: (STEERINGS.index(a.steering), a.index))
    if len(scored) < 2:
        return "unscored"
    best = max(scored, key=lambda a: a.reward)  # max/min keep the first of equal keys
    worst = min(scored, key=lambda a: a.reward)
    if best.reward - worst.reward < margin:
        return "no-spread"
    return best, worst
