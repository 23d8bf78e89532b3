"""The `task` reward kind on hand-written responses: reading the answer's number, each format constraint met and
missed, one component per verifiable part, "cannot score" for an item without a task or a checker that raises,
and the kind combined with `checks` by weight."""

import logging

import pytest
from pydantic import ValidationError

import rewards.tasks
from constitution import Constitution, Principle
from rewards import REWARD_KINDS, RewardContext, RewardSettings, Scored, TaskSpec, build_scorer
from rewards.settings import KINDS
from rewards.tasks import TaskReward, check_answer, check_constraint, extract_number


@pytest.mark.parametrize(("response", "number"), [
    ("Answer: 12\nThat leaves 3 apples for tomorrow.", 12),  # the Answer line beats a later number
    ("She had 5, then bought 3 more, so 8 in all.", 8),  # else the last number
    ("It was -4 degrees at dawn.", -4),
    ("It weighs about 2.5 kg.", 2.5),
    ("That is 1,234 people.", 1234),
    ("The ticket costs $12.", 12),
    ("**Final answer:** 42", 42),
    ("answer: 5\nOn second thought:\nANSWER: 6", 6),  # the last Answer line wins
    ("Answer: $1,250.50 in total", 1250.5),
    ("The list 1,2,3 ends at 3.", 3),  # not a thousands separator
    ("We counted 3 and 4.\nAnswer: twelve", 4),  # an Answer line without a number falls back
    ("There is no number here.", None),
    ("Answer: twelve", None),
])
def test_extract_number(response, number):
    assert extract_number(response) == number


def test_check_answer_is_exact_to_a_tolerance():
    assert check_answer("Answer: 12", 12.0) and check_answer("so 0.3 of it", 0.1 + 0.2)
    assert not check_answer("Answer: 13", 12.0) and not check_answer("no idea", 0.0)


def constraint(kind: str, value=None):
    raw = {"kind": kind} if value is None else {"kind": kind, "value": value}
    (found,) = TaskSpec.model_validate({"constraints": [raw]}).constraints
    return found


FENCED = '```json\n{"name": "Ada", "born": 1815}\n```'
CASES = [  # (kind, value, a response that meets it, one that does not)
    ("max_words", 5, "Boil it seven minutes.", "Boil the egg for seven whole minutes."),
    ("min_words", 5, "- one\n- two three four five", "Too short, really."),
    ("max_sentences", 2, "Boil it. Then cool it in water for 3.5 minutes.", "Boil it. Cool it. Peel it."),
    ("max_sentences", 2, "- first\n- second", "- first\n- second\n- third"),  # a bullet line is a sentence
    ("lowercase", None, "all quiet here, 42 times.", "all quiet here, Mostly."),
    ("keyword", "Basil", "Add fresh basil at the end.", "Add fresh basilico at the end."),
    ("keyword", "c++", "I write C++ daily.", "I write c++11 daily."),
    ("ends_with", "Any questions?", "That is all. Any questions?  \n", "Any questions? That is all."),
    ("ends_with", "Any questions?", "That is all. Any questions?", "That is all. any questions?"),
    ("bullets", 3, "Pack:\n- socks\n* a coat\n  - boots\nThat's it.", "- socks\n* a coat"),
    ("bullets", 2, "- socks\n* a coat\n**Note:** pack light\n---", "- socks\n-no space\n* a coat\n- boots"),
    ("json_keys", ["name", "born"], '{"name": "Ada", "born": 1815, "died": 1852}', '{"name": "Ada"}'),
    ("json_keys", ["name", "born"], FENCED, '{"name": "Ada", "born": 1815'),  # fenced / malformed
    ("json_keys", ["name"], '  {"name": "Ada"}\n', '[{"name": "Ada"}]'),  # an array is not an object
    ("json_keys", ["name"], '```\n{"name": "Ada"}\n```', 'Here it is: {"name": "Ada"}'),
    ("no_commas", None, "Boil it and then cool it.", "Boil it, then cool it."),
]


@pytest.mark.parametrize(("kind", "value", "meets", "misses"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_constraint_met_and_missed(kind, value, meets, misses):
    assert check_constraint(constraint(kind, value), meets)
    assert not check_constraint(constraint(kind, value), misses)


@pytest.mark.parametrize("kind", ["max_words", "lowercase", "no_commas", "max_sentences"])
def test_an_answer_with_no_words_meets_no_constraint(kind):
    for empty in ["", "   \n", "- \n—"]:
        assert not check_constraint(constraint(kind, None if kind in {"lowercase", "no_commas"} else 5), empty)


@pytest.mark.parametrize("bad", [{}, {"answer": None, "constraints": []}, {"answer": "twelve"},
                                 {"constraints": [{"kind": "max_words", "value": 0}]},
                                 {"constraints": [{"kind": "keyword", "value": "  "}]},
                                 {"constraints": [{"kind": "json_keys", "value": []}]},
                                 {"constraints": [{"kind": "no_commas"}, {"kind": "no_commas"}]},
                                 {"constraints": [{"kind": "lowercase", "value": 1}]},
                                 {"answer": 1, "solution": "x"}])
def test_bad_task_specs_are_rejected(bad):
    with pytest.raises(ValidationError):
        TaskSpec.model_validate(bad)


MIXED = TaskSpec.model_validate({"answer": 12, "constraints": [
    {"kind": "max_words", "value": 50}, {"kind": "keyword", "value": "apples"}, {"kind": "no_commas"},
    {"kind": "json_keys", "value": ["a", "b"]}]})


def test_the_task_kind_scores_one_component_per_part_and_nothing_without_a_task():
    with_task, without = TaskReward().score([
        Scored("q", "She has 5 apples and gets 7 more, so 12 apples, that is.\nAnswer: 12", "benign", task=MIXED),
        Scored("q", "Answer: 12", "benign")])
    assert [(c.kind, c.name, c.value) for c in with_task] == [
        ("task", "answer", 1.0), ("task", "max_words<=50", 1.0), ("task", "keyword:apples", 1.0),
        ("task", "no_commas", 0.0), ("task", "json_keys:a,b", 0.0)]
    assert without == []


def test_a_checker_that_raises_cannot_score_that_part_and_is_logged(monkeypatch, caplog):
    def broken(constraint, response):
        raise RuntimeError("checker bug")

    monkeypatch.setattr(rewards.tasks, "check_constraint", broken)
    with caplog.at_level(logging.WARNING, logger="rewards.tasks"):
        (found,) = TaskReward().score([Scored("q", "Answer: 12", "benign", task=MIXED)])
    assert [(c.name, c.value) for c in found] == [("answer", 1.0), ("max_words<=50", None), ("keyword:apples", None),
                                                  ("no_commas", None), ("json_keys:a,b", None)]
    assert "task check max_words<=50 raised" in caplog.text


def test_importing_rewards_registers_the_task_kind_and_configs_may_name_it():
    assert {"checks", "task"} <= set(REWARD_KINDS) and "task" in KINDS


def test_task_and_checks_combined_by_weight():
    principle = Principle(id="short", applies_to=("benign",), critique_request="c", revision_request="r",
                          comparison_question="Which is shorter?", checks={"max_words": 10})
    settings = RewardSettings.model_validate({"components": [{"kind": "checks", "weight": 1.0},
                                                             {"kind": "task", "weight": 3.0}]})
    scorer = build_scorer(settings, RewardContext(Constitution(name="t", principles=[principle])))
    task = TaskSpec.model_validate({"answer": 7, "constraints": [{"kind": "lowercase"}]})
    right, wrong, untasked = scorer.score([Scored("q", "three plus four is 7", "benign", task=task),
                                           Scored("q", "Three plus four is 8", "benign", task=task),
                                           Scored("q", "Three plus four is 8", "benign")])
    assert [(c.kind, c.name, c.weight) for c in right.components] == [
        ("checks", "max_words", 1.0), ("task", "answer", 1.5), ("task", "lowercase", 1.5)]
    assert right.total == 1.0
    assert wrong.total == pytest.approx(1 / 4)  # the check passed (weight 1); both task parts failed (3)
    assert untasked.total == 1.0 and [c.kind for c in untasked.components] == ["checks"]
