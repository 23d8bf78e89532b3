"""Preference pairs from verdicts: the rules that label one pair, and the pair sources that apply them.

One sample's revision verdict (or one contrast's confirming verdict) becomes a labelled `Candidate` or a drop
reason here, and nowhere else: the pairs stage counts those reasons, and the dashboard explains a sample with
no pair by the same rules. Torch-free and independent of `loop`: the store's rows are read through the small
protocols below.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from critique.sampled import AnswerRow, best_and_worst
from critique.sampler import Candidate, clamp, hygiene_reason


class SampleRow(Protocol):
    id: int
    prompt: str
    response: str | None
    revision: str | None


class VerdictRow(Protocol):
    """A stored judge comparison: p(B better), with A the worse side of its construction (answer, negative)."""

    id: int
    p_b: float
    abstained: bool
    principle_id: str
    suspect: bool


class ContrastRow(Protocol):
    principle_id: str
    positive: str
    negative: str


@dataclass(frozen=True)
class PairRules:
    """What the pairs stage applies to a run's verdicts (from its config): the pair source, the judge's margin
    (its veto on pairs labelled by construction) and the range soft labels are clamped into."""

    source: str
    judge_margin: float
    label_range: tuple[float, float]
    reward_margin: float = 0.5
    """sampled: the smallest reward gap between a prompt's best and worst answers that makes a pair."""

    @property
    def pair_source(self) -> PairSource:
        return PAIR_SOURCES[self.source]

    @property
    def certain(self) -> float:
        """The soft label of a pair labelled by construction: the top of the label range."""
        return self.label_range[1]


def vetoed(verdict: VerdictRow | None, rules: PairRules) -> bool:
    """The judge confidently prefers the side a construction labelled worse (an abstention never vetoes)."""
    return verdict is not None and not verdict.abstained and verdict.p_b < 0.5 - rules.judge_margin


def revision_pair(sample: SampleRow, verdict: VerdictRow, rules: PairRules) -> Candidate | str:
    """A sample's answer and revision as a candidate, or why not ("abstained", "injection-suspect",
    "judge-disagrees").

    A judged source orders and weights the pair by the judge's clamped label; the others choose the revision
    with the certain label, unless the judge vetoes it."""
    if not rules.pair_source.judged:
        if vetoed(verdict, rules):
            return "judge-disagrees"
        return Candidate(sample.prompt, sample.revision or "", sample.response or "", rules.certain,
                         verdict.principle_id, "revision", (sample.id, verdict.id, True))
    if verdict.abstained:
        return "abstained"
    if verdict.suspect:  # the winner stops winning without one part of it: what an injection does
        return "injection-suspect"
    p_b = clamp(verdict.p_b, rules.label_range)
    revision_wins = p_b > 0.5
    chosen, rejected = (sample.revision, sample.response) if revision_wins else (sample.response, sample.revision)
    return Candidate(sample.prompt, chosen or "", rejected or "", max(p_b, 1 - p_b), verdict.principle_id,
                     "judged", (sample.id, verdict.id, revision_wins))


def contrast_pair(sample: SampleRow, contrast: ContrastRow, verdict: VerdictRow | None,
                  rules: PairRules) -> Candidate | str:
    """A contrast's positive over its negative answer with the certain label, unless the confirming judge (if
    asked: pairs.confirm) vetoes it."""
    if vetoed(verdict, rules):
        return "judge-disagrees"
    return Candidate(sample.prompt, contrast.positive, contrast.negative, rules.certain, contrast.principle_id,
                     "contrastive", (sample.id, verdict.id if verdict else None, False))


def sampler_reason(candidate: Candidate, margin: float | None) -> str | None:
    """Why the sampler drops this candidate on its own (`critique.sampler.sample_pairs`): label hygiene, then
    confidence under the iteration's `margin` (None: not known, not checked)."""
    reason = hygiene_reason(candidate.chosen, candidate.rejected)
    if reason is None and margin is not None and candidate.confidence < margin:
        return "not-confident"
    return reason


@dataclass(frozen=True)
class IterationRows:
    """An iteration's rows that pairs are made of."""

    samples: Sequence[SampleRow]
    """In id order."""
    verdicts: Mapping[tuple[str, int], VerdictRow]
    """(comparison kind "revision" or "contrastive", sample id) → the judge's verdict."""
    contrasts: Sequence[tuple[ContrastRow, SampleRow]]
    answers: Mapping[int, Sequence[AnswerRow]] = field(default_factory=dict)
    """sample id → its sampled answers with their rewards (the sampled source)."""


def _collect(outcomes, dropped: Counter[str]) -> list[Candidate]:
    found = []
    for outcome in outcomes:
        if isinstance(outcome, str):
            dropped[outcome] += 1
        else:
            found.append(outcome)
    return found


def revision_candidates(rows: IterationRows, rules: PairRules, dropped: Counter[str]) -> list[Candidate]:
    """Each judged sample's answer and revision (`revision_pair`), in sample order."""
    judged = ((s, rows.verdicts.get(("revision", s.id))) for s in rows.samples)
    return _collect((revision_pair(s, v, rules) for s, v in judged if v is not None), dropped)


def contrast_candidates(rows: IterationRows, rules: PairRules, dropped: Counter[str]) -> list[Candidate]:
    """Each contrast's answers (`contrast_pair`), in contrast order."""
    return _collect((contrast_pair(s, c, rows.verdicts.get(("contrastive", s.id)), rules)
                     for c, s in rows.contrasts), dropped)


def sampled_pair(sample: SampleRow, answers: Sequence[AnswerRow], rules: PairRules) -> Candidate | str:
    """A sample's best answer over its worst (`critique.sampled.best_and_worst`), or why not; the soft label
    grows with the reward gap, clamped into the label range."""
    picked = best_and_worst(answers, rules.reward_margin)
    if isinstance(picked, str):
        return picked
    best, worst = picked
    target = clamp(0.5 + (best.reward - worst.reward) / 2, rules.label_range)
    principle_id = best.principle_id or worst.principle_id or ""
    return Candidate(sample.prompt, best.text, worst.text, target, principle_id, "sampled", (sample.id, None, False))


def sampled_candidates(rows: IterationRows, rules: PairRules, dropped: Counter[str]) -> list[Candidate]:
    """Each sample's best-over-worst pair (`sampled_pair`), in sample order."""
    return _collect((sampled_pair(s, rows.answers.get(s.id, ()), rules) for s in rows.samples), dropped)


CandidateBuilder = Callable[[IterationRows, PairRules, Counter[str]], list[Candidate]]


@dataclass(frozen=True)
class PairSource:
    """A `pairs.source`: what the earlier stages must produce for it, and how it turns them into candidates
    (counting each drop by reason in `dropped`)."""

    name: str
    candidates: CandidateBuilder
    contrasts: bool
    """Generate also answers under a principle's positive and negative system prompt; with pairs.confirm the
    judge compares the two."""
    revisions: bool
    """The policy critiques and revises its answers, and the judge compares each answer with its revision."""
    judged: bool
    """The judge's label orders and weights a revision pair (else the revision wins unless the judge vetoes)."""
    sampled: bool = False
    """Generate draws K answers per prompt (`pairs.sampled`), and the judge stage scores each by the rewards."""


PAIR_SOURCES: dict[str, PairSource] = {}


def register_pair_source(name: str, *, contrasts: bool = False, revisions: bool = False, judged: bool = False,
                         sampled: bool = False):
    def add(candidates: CandidateBuilder) -> CandidateBuilder:
        if name in PAIR_SOURCES:
            raise ValueError(f"pair source {name!r} is registered twice")
        PAIR_SOURCES[name] = PairSource(name, candidates, contrasts=contrasts, revisions=revisions, judged=judged,
                                        sampled=sampled)
        return candidates

    return add


register_pair_source("judged", revisions=True, judged=True)(revision_candidates)
register_pair_source("revision", revisions=True)(revision_candidates)
register_pair_source("contrastive", contrasts=True)(contrast_candidates)
register_pair_source("sampled", sampled=True)(sampled_candidates)


@register_pair_source("mixed", contrasts=True, revisions=True)
def mixed_candidates(rows: IterationRows, rules: PairRules, dropped: Counter[str]) -> list[Candidate]:
    """Revision pairs, then contrastive pairs."""
    return revision_candidates(rows, rules, dropped) + contrast_candidates(rows, rules, dropped)


@dataclass(frozen=True)
class PairChoice:
    chosen_is_b: bool
    target: float
    """Soft label: the judge's probability that the chosen response is better (>= 0.5)."""


def choose(p_b: float, margin: float) -> PairChoice | None:
    """The pair implied by p(B better), or None when |p_b - 0.5| < margin (too close to call): one verdict
    outside an iteration (`cai principle try`)."""
    if abs(p_b - 0.5) < margin:
        return None
    return PairChoice(chosen_is_b=p_b > 0.5, target=max(p_b, 1.0 - p_b))
