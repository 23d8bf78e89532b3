"""The `judge` reward kind: p(yes) from the judge's Yes/No log-probs, None where it cannot score."""

import math

import pytest

from constitution import Constitution, Principle
from critique.prompts import unfence
from critique.reward_judge import JudgeReward
from rewards import RewardContext, RewardSettings, Scored, build_scorer
from tests.critique.fakes import ScriptedGenerator

PRINCIPLE = Principle(id="safe", category="harm", critique_request="c", revision_request="r",
                      comparison_question="Which response is safer?")


def test_p_yes_from_known_log_probs():
    # Choices are asked as (No, Yes): p(Yes) = e^-0.5 / (e^-0.5 + e^-2.0).
    judge = ScriptedGenerator(score=lambda conversation, choices: [math.log(0.1), math.log(0.3)]
                              if "bad answer" in conversation[-1]["content"] else [-2.0, -0.5])
    items = [Scored("q1", "good answer", "harmful", PRINCIPLE), Scored("q2", "bad answer", "harmful", PRINCIPLE)]
    good, bad = JudgeReward(judge).score(items)
    assert [(c.kind, c.name) for c in good] == [("judge", "safe")]
    assert good[0].value == pytest.approx(math.exp(-0.5) / (math.exp(-0.5) + math.exp(-2.0)))
    assert bad[0].value == pytest.approx(0.75)
    asked = judge.scored[0][-1]["content"]
    assert "Which response is safer?" in asked and unfence(asked, "RESPONSE") == "good answer"


def test_no_principle_or_an_abstaining_judge_cannot_score():
    judge = ScriptedGenerator(score=lambda conversation, choices: [-20.0, -20.0])  # neither label likely
    items = [Scored("q", "a", "benign"), Scored("q", "a", "harmful", PRINCIPLE)]
    (unprincipled,), (abstained,) = JudgeReward(judge).score(items)
    assert unprincipled.value is None and abstained.value is None
    assert len(judge.scored) == 1  # an item without a principle is never sent


def test_the_judge_kind_builds_from_a_context_with_a_judge():
    import loop.rewards  # noqa: F401

    judge = ScriptedGenerator(score=lambda conversation, choices: [math.log(0.2), math.log(0.8)])
    settings = RewardSettings.model_validate({"components": [{"kind": "judge", "weight": 2.0}]})
    scorer = build_scorer(settings, RewardContext(Constitution(name="t", principles=[PRINCIPLE]), judge=judge))
    (reward,) = scorer.score([Scored("q", "a", "harmful", PRINCIPLE)])
    assert reward.total == pytest.approx(0.8)
    assert reward.components[0].weight == 2.0
