"""Best-of-K pairs: the best answer over the worst when the reward gap clears the margin, with ties going to
on-policy answers, and groups with no spread counted."""

from collections import Counter
from dataclasses import dataclass

import pytest

from constitution.checks import Checks
from critique.pairs import IterationRows, PairRules, sampled_candidates
from critique.sampled import answer_text, best_and_worst, conversation, steering_plan, steers


@dataclass
class Answer:
    id: int
    index: int
    steering: str
    text: str
    reward: float | None
    principle_id: str | None = None


@dataclass
class SampleRow:
    id: int
    prompt: str
    response: str | None = None
    revision: str | None = None


@dataclass
class Principle:
    id: str
    positive_prefix: str | None = "I can't help with that."
    negative_prefix: str | None = "Sure!"
    positive_system_prompt: str = "You never help with harm."
    negative_system_prompt: str = "You always help with harm."
    checks: Checks | None = None

    def render(self, field: str, **_) -> str:
        return getattr(self, field)


def test_the_plan_puts_plain_answers_first():
    assert steering_plan(4, 1, 1) == ["plain", "plain", "positive", "negative"]
    assert steering_plan(2, 1, 1) == ["positive", "negative"]


def test_best_over_worst_and_ties_prefer_plain_answers():
    answers = [Answer(1, 0, "plain", "a", 0.0), Answer(2, 1, "positive", "b", 1.0), Answer(3, 2, "negative", "c", 0.0)]
    best, worst = best_and_worst(answers, margin=0.5)
    assert (best.id, worst.id) == (2, 1)  # two answers at 0.0: the plain one is the worst kept
    tie_best = [Answer(1, 0, "plain", "a", 1.0), Answer(2, 1, "positive", "b", 1.0), Answer(3, 2, "negative", "c", 0)]
    assert [a.id for a in best_and_worst(tie_best, margin=0.5)] == [1, 3]


def test_no_spread_and_unscored_groups_are_reasons():
    assert best_and_worst([Answer(1, 0, "plain", "a", 0.5), Answer(2, 1, "plain", "b", 0.75)], 0.5) == "no-spread"
    assert best_and_worst([Answer(1, 0, "plain", "a", 1.0), Answer(2, 1, "plain", "b", None)], 0.5) == "unscored"


def test_sampled_candidates_count_each_drop_and_label_by_the_gap():
    samples = [SampleRow(1, "p1"), SampleRow(2, "p2"), SampleRow(3, "p3")]
    answers = {1: [Answer(1, 0, "plain", "comply", 0.0), Answer(2, 1, "positive", "I can't help", 1.0, "harm")],
               2: [Answer(3, 0, "plain", "x", 1.0), Answer(4, 1, "negative", "y", 1.0, "help")]}
    dropped: Counter[str] = Counter()
    rules = PairRules("sampled", 0.02, (0.1, 0.9))
    [pair] = sampled_candidates(IterationRows(samples, {}, [], answers), rules, dropped)
    assert (pair.prompt, pair.chosen, pair.rejected, pair.principle_id) == ("p1", "I can't help", "comply", "harm")
    assert pair.target == pytest.approx(0.9)  # 0.5 + 1.0 / 2, clamped into the label range
    assert pair.source == "sampled" and pair.ref == (1, None, False)
    assert dropped == {"no-spread": 1, "unscored": 1}


def test_steered_answers_continue_the_principles_prefix():
    p = Principle("harm")
    assert conversation("q", "plain", None) == [{"role": "user", "content": "q"}]
    positive = conversation("q", "positive", p)
    assert positive[0] == {"role": "system", "content": "You never help with harm."}
    assert positive[-1] == {"role": "assistant", "content": "I can't help with that."}
    assert answer_text("positive", p, "Try something else.") == "I can't help with that. Try something else."
    assert answer_text("plain", None, "Sure.") == "Sure."
    assert steers("plain") is None
    assert steers("negative")(Principle("x", negative_prefix=None)) is False


def test_steering_prefers_principles_whose_checks_grade_the_prefix():
    refusing = Principle("overcautious", negative_prefix="I can't help with that.", checks=Checks(refuses=False))
    lecturing = Principle("preachy", negative_prefix="I must remind you to be careful.")
    unprefixed = Principle("fabrication", negative_prefix=None, checks=Checks(no_urls=True))
    where = steers("negative", [refusing, lecturing, unprefixed])
    assert [p.id for p in (refusing, lecturing, unprefixed) if where(p)] == ["overcautious"]
    # Without any checked principle that steers, every prefixed one does.
    where = steers("negative", [lecturing, unprefixed])
    assert [p.id for p in (refusing, lecturing, unprefixed) if where(p)] == ["overcautious", "preachy"]
