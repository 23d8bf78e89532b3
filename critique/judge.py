"""The AI judge: pairwise comparison under a principle, debiased by asking in both orders.

p(B better) is read from the next-token probabilities of the two option labels (a soft label), once with B
second and once with B first; the average cancels the judge's preference for a position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from constitution import Principle
from critique.prompts import judge_conversation
from policies.serving import Generator, Progress

LABELS = ("A", "B")


@dataclass(frozen=True)
class Matchup:
    prompt: str
    a: str
    b: str
    principle: Principle


@dataclass(frozen=True)
class Verdict:
    p_b_when_second: float
    """p(B better) with the responses shown in the order (a, b)."""
    p_b_when_first: float
    """p(B better) with the responses shown in the order (b, a)."""

    @property
    def p_b(self) -> float:
        """Position-debiased probability that B is the better response."""
        return (self.p_b_when_second + self.p_b_when_first) / 2


def two_way_softmax(logp_first: float, logp_second: float) -> float:
    """p(second label) among the two labels only (renormalised: other tokens do not count)."""
    return 1.0 / (1.0 + math.exp(logp_first - logp_second))


def judge(generator: Generator, matchups: Sequence[Matchup],
          progress: Progress | None = None) -> list[Verdict]:
    conversations = []
    for m in matchups:
        conversations.append(judge_conversation(m.prompt, m.a, m.b, m.principle, LABELS))
        conversations.append(judge_conversation(m.prompt, m.b, m.a, m.principle, LABELS))
    scores = generator.choice_logprobs(conversations, LABELS, progress)
    verdicts = []
    for i in range(len(matchups)):
        (a_fwd, b_fwd), (a_swp, b_swp) = scores[2 * i], scores[2 * i + 1]
        verdicts.append(Verdict(
            p_b_when_second=two_way_softmax(a_fwd, b_fwd),
            # In the swapped order B is shown under the first label.
            p_b_when_first=1.0 - two_way_softmax(a_swp, b_swp),
        ))
    return verdicts
