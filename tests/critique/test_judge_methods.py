"""Each judging method's arithmetic on scripted log-probs and replies."""

import math

import pytest

from constitution import Constitution, Principle
from critique.judge import (
    ChainOfThoughtJudge,
    EnsembleJudge,
    LabelJudge,
    Matchup,
    PointwiseJudge,
    SelfConsistencyJudge,
    ensemble_principles,
    label_probability,
    vote_share,
)
from critique.prompts import unfence
from tests.critique.fakes import ScriptedGenerator


def principle(pid: str, category: str = "harm") -> Principle:
    return Principle(id=pid, category=category, critique_request="c", revision_request="r",
                     comparison_question=f"Which is better by {pid}?")


RULES = Constitution(name="t", principles=[principle("h1"), principle("h2"), principle("o1", "honesty"),
                                           principle("h3")])


def shown(conversation, label: str) -> str:
    text = conversation[-1]["content"] if conversation[-1]["role"] == "user" else conversation[-2]["content"]
    return unfence(text, f"RESPONSE {label}")


def test_label_probability_abstains_on_junk():
    assert label_probability([math.log(0.2), math.log(0.6)], 1e-4) == pytest.approx(0.75)
    # Neither label is a likely next token: both below 1e-3.
    assert label_probability([math.log(1e-5), math.log(2e-5)], 1e-3) is None
    assert label_probability([float("nan"), 0.0], 1e-4) is None
    assert label_probability([float("-inf"), float("-inf")], 1e-4) is None
    # Any value that is not finite abstains, even beside a likely label.
    assert label_probability([float("-inf"), math.log(0.5)], 1e-4) is None


def test_label_judge_abstains_when_one_order_has_no_label_mass():
    def score(conversation, choices):
        return [math.log(1e-6), math.log(1e-6)] if shown(conversation, "A") == "x" else [math.log(.3), math.log(.3)]
    (verdict,) = LabelJudge(min_label_prob=1e-3).judge(ScriptedGenerator(score=score),
                                                        [Matchup("q", "x", "y", RULES.get("h1"))])
    assert verdict.abstained and verdict.p_b == 0.5


def test_ensemble_takes_k_principles_of_the_same_category_in_file_order():
    assert [p.id for p in ensemble_principles(RULES, RULES.get("h2"), 3)] == ["h2", "h3", "h1"]
    assert [p.id for p in ensemble_principles(RULES, RULES.get("o1"), 3)] == ["o1"]


def test_ensemble_averages_its_principles():
    # Under h1 the judge prefers the second slot 0.8; under h2 it prefers B by content (0.7 either order).
    def score(conversation, choices):
        text = conversation[-1]["content"]
        if "by h1" in text:
            return [math.log(0.2), math.log(0.8)]
        b_second = shown(conversation, "B") == "good"
        return [math.log(0.3), math.log(0.7)] if b_second else [math.log(0.7), math.log(0.3)]
    (verdict,) = EnsembleJudge(RULES, k=2).judge(ScriptedGenerator(score=score),
                                                 [Matchup("q", "bad", "good", RULES.get("h1"))])
    # h1: p_b second 0.8, first 1 - 0.8 = 0.2; h2: 0.7 and 1 - 0.3 = 0.7.
    assert verdict.p_b_when_second == pytest.approx((0.8 + 0.7) / 2)
    assert verdict.p_b_when_first == pytest.approx((0.2 + 0.7) / 2)
    assert verdict.p_b == pytest.approx(0.6)


def test_vote_share_counts_only_label_votes():
    assert vote_share(["B", " B.", "A", "maybe", "Bx"], ("A", "B")) == pytest.approx(3 / 4)
    assert vote_share(["no", ""], ("A", "B")) is None


def test_self_consistency_votes_in_both_orders():
    # Always votes for the response "good" (4 of 5 samples) wherever it is shown.
    counter = {"n": 0}

    def reply(conversation):
        counter["n"] += 1
        good_label = "A" if shown(conversation, "A") == "good" else "B"
        other = "B" if good_label == "A" else "A"
        return good_label if counter["n"] % 5 else other
    fake = ScriptedGenerator(reply=reply)
    (verdict,) = SelfConsistencyJudge(n=5).judge(fake, [Matchup("q", "bad", "good", RULES.get("h1"))])
    assert len(fake.generated) == 10
    assert verdict.p_b_when_second == pytest.approx(0.8)
    assert verdict.p_b_when_first == pytest.approx(0.8)


def test_pointwise_compares_log_odds_of_yes():
    # p(yes | good) = 0.8, p(yes | bad) = 0.5: p(B better) = sigmoid(logit 0.8 - logit 0.5) = 0.8.
    def score(conversation, choices):
        assert list(choices) == ["No", "Yes"]
        p = 0.8 if unfence(conversation[-1]["content"], "RESPONSE") == "good" else 0.5
        return [math.log(1 - p), math.log(p)]
    (verdict,) = PointwiseJudge().judge(ScriptedGenerator(score=score), [Matchup("q", "bad", "good", RULES.get("h1"))])
    assert verdict.p_b == pytest.approx(0.8) and not verdict.ordered


def test_chain_of_thought_reads_the_label_after_its_reasoning():
    fake = ScriptedGenerator(
        reply=lambda conversation: "B is kinder. Verdict: B",
        score=lambda conversation, choices: ([math.log(0.1), math.log(0.9)]
                                             if shown(conversation, "B") == "good" else [math.log(0.9), math.log(0.1)]))
    (verdict,) = ChainOfThoughtJudge().judge(fake, [Matchup("q", "bad", "good", RULES.get("h1"))])
    assert verdict.p_b == pytest.approx(0.9)
    # The reasoning is kept up to its own verdict, then the prefix the label follows.
    assert fake.scored[0][-1] == {"role": "assistant", "content": "B is kinder.\nVerdict:"}
