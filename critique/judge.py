"""The AI judge: which of two responses better follows a principle, as a soft label p(B better).

Every method returns one `Verdict` per matchup. The pairwise methods ask in both orders (B second, then B
first) so that a preference for a position cancels in the mean; the pointwise method scores each response on
its own and has no order to cancel. A verdict abstains when the judge's probabilities carry no usable
information (a non-finite value, or both labels outside the judge's likely next tokens); an abstained verdict
is dropped, never turned into a pair.

Methods (measured on the shipped model by `cai judge eval`; see the README):
- `labels`: option-label log-probs in both orders (the CAI paper's RLAIF judge, debiased).
- `ensemble`: `labels` under k principles of the same category, averaged.
- `self-consistency`: n sampled verdicts per order; p is the share of votes for B.
- `pointwise`: p(yes) that each response follows the principle; the two log-odds compared (Bradley-Terry).
- `cot`: the judge writes its reasoning, then the label log-probs are read after "Verdict:".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from constitution import Constitution, Principle
from critique.prompts import (
    COT_VERDICT_PREFIX,
    cot_conversation,
    judge_conversation,
    pointwise_conversation,
)
from policies.serving import Conversation, Generator, Progress, SamplingParams

LABELS = ("A", "B")
COT_LABELS = (" A", " B")
"""After "Verdict:" the label is a new word: its token carries the leading space."""
YES_NO = ("Yes", "No")
MethodName = Literal["labels", "ensemble", "self-consistency", "pointwise", "cot"]


@dataclass(frozen=True)
class Shown:
    """A response whose text depends on where it is shown (label and position 0/1): for canaries that
    address the slot they appear in."""

    text: str
    render: Callable[[str, str, int], str]
    """(text, label, position) -> the text shown."""


Response = str | Shown


def show(response: Response, label: str, position: int) -> str:
    return response if isinstance(response, str) else response.render(response.text, label, position)


def plain(response: Response) -> str:
    return response if isinstance(response, str) else response.text


@dataclass(frozen=True)
class Matchup:
    prompt: str
    a: Response
    b: Response
    principle: Principle


@dataclass(frozen=True)
class Verdict:
    p_b_when_second: float
    """p(B better) with the responses shown in the order (a, b)."""
    p_b_when_first: float
    """p(B better) with the responses shown in the order (b, a)."""
    abstained: bool = False
    ordered: bool = True
    """False for pointwise scores: no order was shown, so there is no position consistency to measure."""
    suspect: bool = False
    """The winner stops winning without one part of it (`critique.consistency`): kept out of training."""

    @property
    def p_b(self) -> float:
        """Position-debiased probability that B is the better response (0.5 when abstained)."""
        return 0.5 if self.abstained else (self.p_b_when_second + self.p_b_when_first) / 2

    @property
    def orders_agree(self) -> bool:
        return (self.p_b_when_second > 0.5) == (self.p_b_when_first > 0.5)


ABSTAINED = Verdict(0.5, 0.5, abstained=True)


def two_way_softmax(logp_first: float, logp_second: float) -> float:
    """p(second label) among the two labels only (renormalised: other tokens do not count)."""
    return 1.0 / (1.0 + math.exp(logp_first - logp_second))


def label_probability(logps: Sequence[float], min_label_prob: float) -> float | None:
    """p(second label) from the two labels' log-probs, or None (abstain) when a value is not finite or
    neither label is a likely next token (both below `min_label_prob`)."""
    first, second = logps
    if not (math.isfinite(first) and math.isfinite(second)):
        return None
    if max(first, second) < math.log(min_label_prob):
        return None
    return two_way_softmax(first, second)


class JudgeMethod(Protocol):
    name: MethodName

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]: ...


Build = Callable[[str, str, str, Principle, tuple[str, str]], Conversation]
"""(prompt, first, second, principle, labels) -> the judge's conversation."""


def _both_orders(matchups: Sequence[Matchup], build: Build = judge_conversation) -> list[Conversation]:
    """Two conversations per matchup: (a first, b second), then (b first, a second)."""
    a_label, b_label = LABELS
    return [c for m in matchups for c in (
        build(m.prompt, show(m.a, a_label, 0), show(m.b, b_label, 1), m.principle, LABELS),
        build(m.prompt, show(m.b, a_label, 0), show(m.a, b_label, 1), m.principle, LABELS))]


def _pairwise(p_second: Sequence[float | None]) -> list[Verdict]:
    """Verdicts from p(second label) in each order, two per matchup as `_both_orders` made them; in the
    swapped order B is shown under the first label."""
    verdicts = []
    for forward, swapped in zip(p_second[0::2], p_second[1::2], strict=True):
        verdicts.append(ABSTAINED if forward is None or swapped is None
                        else Verdict(p_b_when_second=forward, p_b_when_first=1.0 - swapped))
    return verdicts


@dataclass(frozen=True)
class LabelJudge:
    """Option-label log-probs, asked in both orders."""

    min_label_prob: float = 1e-4
    name: MethodName = "labels"

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]:
        scores = generator.choice_logprobs(_both_orders(matchups), LABELS, progress)
        return _pairwise([label_probability(s, self.min_label_prob) for s in scores])


def ensemble_principles(constitution: Constitution, principle: Principle, k: int) -> list[Principle]:
    """`principle` and the next k-1 principles of its category (in file order, wrapping around)."""
    same = [p for p in constitution.principles if p.category == principle.category]
    start = next((i for i, p in enumerate(same) if p.id == principle.id), None)
    if start is None:
        return [principle]
    return [same[(start + j) % len(same)] for j in range(min(k, len(same)))]


@dataclass(frozen=True)
class EnsembleJudge:
    """`LabelJudge` under k principles of the matchup's category; the verdicts that did not abstain averaged."""

    constitution: Constitution
    k: int = 3
    min_label_prob: float = 1e-4
    name: MethodName = "ensemble"

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]:
        groups = [[replace(m, principle=p) for p in ensemble_principles(self.constitution, m.principle, self.k)]
                  for m in matchups]
        flat = LabelJudge(self.min_label_prob).judge(generator, [m for g in groups for m in g], progress)
        verdicts, at = [], 0
        for group in groups:
            members = [v for v in flat[at:at + len(group)] if not v.abstained]
            at += len(group)
            verdicts.append(ABSTAINED if not members else Verdict(
                p_b_when_second=sum(v.p_b_when_second for v in members) / len(members),
                p_b_when_first=sum(v.p_b_when_first for v in members) / len(members)))
        return verdicts


def vote_share(replies: Sequence[str], labels: tuple[str, str]) -> float | None:
    """The share of replies that name the second label, among those that name either; None if none do."""
    votes = [r.strip()[:1] for r in replies]
    valid = [v for v in votes if v in labels]
    return None if not valid else sum(v == labels[1] for v in valid) / len(valid)


@dataclass(frozen=True)
class SelfConsistencyJudge:
    """n sampled verdicts per order (temperature > 0); the share of votes is the probability."""

    n: int = 5
    temperature: float = 1.0
    seed: int = 0
    name: MethodName = "self-consistency"

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]:
        conversations = _both_orders(matchups)
        replies = generator.generate([c for c in conversations for _ in range(self.n)],
                                     SamplingParams(max_new_tokens=2, temperature=self.temperature, seed=self.seed),
                                     progress)
        return _pairwise([vote_share(replies[j * self.n:(j + 1) * self.n], LABELS)
                          for j in range(len(conversations))])


def log_odds(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class PointwiseJudge:
    """p(yes) that each response follows the principle, asked of each response alone, compared as
    p(B better) = sigmoid(logit p_yes(B) - logit p_yes(A)). No order is shown, so no position bias exists."""

    min_label_prob: float = 1e-4
    name: MethodName = "pointwise"

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]:
        conversations = [pointwise_conversation(m.prompt, show(r, "", 0), m.principle)
                         for m in matchups for r in (m.a, m.b)]
        # Scored as (No, Yes): label_probability gives p(Yes), the second choice.
        scores = generator.choice_logprobs(conversations, YES_NO[::-1], progress)
        p_yes = [label_probability(s, self.min_label_prob) for s in scores]
        verdicts = []
        for i in range(len(matchups)):
            yes_a, yes_b = p_yes[2 * i], p_yes[2 * i + 1]
            if yes_a is None or yes_b is None:
                verdicts.append(replace(ABSTAINED, ordered=False))
                continue
            p_b = 1.0 / (1.0 + math.exp(log_odds(yes_a) - log_odds(yes_b)))
            verdicts.append(Verdict(p_b, p_b, ordered=False))
        return verdicts


@dataclass(frozen=True)
class ChainOfThoughtJudge:
    """The judge reasons first (greedy), then the label log-probs are read after "Verdict:" in both orders."""

    max_new_tokens: int = 96
    min_label_prob: float = 1e-4
    name: MethodName = "cot"

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]:
        asked = _both_orders(matchups, cot_conversation)
        reasons = generator.generate(asked, SamplingParams(max_new_tokens=self.max_new_tokens), progress)
        continued: list[Conversation] = [
            [*c, {"role": "assistant", "content": reason.split("Verdict")[0].rstrip() + "\n" + COT_VERDICT_PREFIX}]
            for c, reason in zip(asked, reasons, strict=True)]
        scores = generator.choice_logprobs(continued, COT_LABELS, progress)
        return _pairwise([label_probability(s, self.min_label_prob) for s in scores])


@dataclass(frozen=True)
class MethodOptions:
    """The judge settings a method may use (`judge.*` in a run config)."""

    ensemble_k: int = 3
    samples: int = 5
    min_label_prob: float = 1e-4
    seed: int = 0


MethodFactory = Callable[[Constitution, MethodOptions], JudgeMethod]
JUDGE_METHODS: dict[str, MethodFactory] = {
    "labels": lambda constitution, o: LabelJudge(o.min_label_prob),
    "ensemble": lambda constitution, o: EnsembleJudge(constitution, o.ensemble_k, o.min_label_prob),
    "self-consistency": lambda constitution, o: SelfConsistencyJudge(o.samples, seed=o.seed),
    "pointwise": lambda constitution, o: PointwiseJudge(o.min_label_prob),
    "cot": lambda constitution, o: ChainOfThoughtJudge(min_label_prob=o.min_label_prob),
}
"""Each method's name and how it is made from the constitution and the judge settings."""
METHODS: tuple[str, ...] = tuple(JUDGE_METHODS)


def make_method(name: MethodName, constitution: Constitution, *, ensemble_k: int = 3, samples: int = 5,
                min_label_prob: float = 1e-4, seed: int = 0) -> JudgeMethod:
    factory = JUDGE_METHODS.get(name)
    if factory is None:
        raise ValueError(f"unknown judge method {name!r}; choose one of {', '.join(METHODS)}")
    return factory(constitution, MethodOptions(ensemble_k, samples, min_label_prob, seed))


def judge(generator: Generator, matchups: Sequence[Matchup], progress: Progress | None = None) -> list[Verdict]:
    """Today's judge: option-label log-probs in both orders."""
    return LabelJudge().judge(generator, matchups, progress)
