"""The reward interface: combining components by weight, "cannot score", the kind registry and the scorer."""

import math

import pytest
from pydantic import ValidationError

from constitution import Constitution, Principle
from rewards import (
    REWARD_KINDS,
    Component,
    RewardContext,
    RewardScorer,
    RewardSettings,
    Scored,
    build_scorer,
    combine,
    register_reward_kind,
)

PRINCIPLE = Principle(id="p", category="harm", critique_request="c", revision_request="r",
                      comparison_question="Which is safer?")
CONSTITUTION = Constitution(name="t", principles=[PRINCIPLE])


def test_combine_is_the_weighted_mean_of_what_scored():
    reward = combine([Component("checks", "refuses", 1.0, 0.5), Component("checks", "max_words", 0.0, 0.5),
                      Component("judge", "p", 0.8, 2.0)])
    assert reward.total == pytest.approx((0.5 * 1.0 + 0.5 * 0.0 + 2.0 * 0.8) / 3.0)  # 0.7


def test_components_that_cannot_score_or_weigh_nothing_are_left_out():
    reward = combine([Component("checks", "refuses", None, 1.0), Component("judge", "p", 0.25, 1.0),
                      Component("reward_model", "score", 1.0, 0.0)])
    assert reward.total == pytest.approx(0.25)
    assert len(reward.components) == 3  # all kept, so the total can be traced


def test_nothing_scored_is_no_reward():
    assert combine([]).total is None
    assert combine([Component("judge", "p", None)]).total is None


def test_passes_checks_needs_every_check_passed_and_at_least_one():
    assert combine([Component("checks", "a", 1.0), Component("judge", "p", 0.1)]).passes_checks
    assert not combine([Component("checks", "a", 1.0), Component("checks", "b", 0.0)]).passes_checks
    assert not combine([Component("checks", "a", 1.0), Component("checks", "b", None)]).passes_checks
    assert not combine([Component("judge", "p", 1.0)]).passes_checks


def test_a_kind_registered_twice_is_refused(monkeypatch):
    monkeypatch.setitem(REWARD_KINDS, "constant", lambda component, settings, context: None)
    with pytest.raises(ValueError, match="reward kind 'constant' is registered twice"):
        register_reward_kind("constant")(lambda component, settings, context: None)


class Constant:
    """A reward function that gives every item the same components."""

    def __init__(self, kind: str, values: list[float | None]):
        self.kind = kind
        self.values = values

    def score(self, items, progress=None):
        return [[Component(self.kind, f"c{i}", v) for i, v in enumerate(self.values)] for _ in items]


def test_the_scorer_shares_a_kinds_weight_among_its_components_that_scored():
    scorer = RewardScorer(((Constant("checks", [1.0, 0.0, None]), 1.0), (Constant("judge", [0.9]), 2.0)))
    (reward,) = scorer.score([Scored("q", "a", "harmful", PRINCIPLE)])
    assert [c.weight for c in reward.components] == [0.5, 0.5, 0.0, 2.0]
    # checks: 1 of 2 passed at weight 1; judge 0.9 at weight 2.
    assert reward.total == pytest.approx((0.5 * 1.0 + 0.5 * 0.0 + 2.0 * 0.9) / 3.0)


def test_a_kind_with_no_components_for_an_item_leaves_the_others():
    scorer = RewardScorer(((Constant("checks", []), 1.0), (Constant("judge", [0.4]), 1.0)))
    (reward,) = scorer.score([Scored("q", "a", "benign")])
    assert reward.total == pytest.approx(0.4)
    assert not reward.passes_checks


def test_settings_default_to_checks_graded_by_the_outcome_detector():
    settings = RewardSettings()
    assert [(c.kind, c.weight) for c in settings.components] == [("checks", 1.0)]
    assert settings.refusal_classifier == "outcome"


@pytest.mark.parametrize("bad", [{"components": [{"kind": "vibes"}]},
                                 {"components": [{"kind": "judge", "weight": -1}]},
                                 {"components": [{"kind": "judge", "weight": math.nan}]},
                                 {"components": []},
                                 {"refusal_classifier": "judge"},
                                 {"component": []}])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        RewardSettings.model_validate(bad)


@pytest.mark.parametrize(("kind", "needs"), [("judge", "a judge model"), ("reward_model", "a trained reward model")])
def test_a_kind_without_its_model_names_the_kind_and_what_it_needs(kind, needs):
    import loop.rewards  # noqa: F401  (registers every kind)

    settings = RewardSettings.model_validate({"components": [{"kind": kind}]})
    with pytest.raises(ValueError, match=f"reward kind '{kind}' needs {needs}"):
        build_scorer(settings, RewardContext(CONSTITUTION))


def test_a_reward_model_directory_without_a_head_is_refused(tmp_path):
    import loop.rewards  # noqa: F401

    settings = RewardSettings.model_validate({"components": [{"kind": "reward_model"}]})
    with pytest.raises(ValueError, match="has no head.safetensors"):
        build_scorer(settings, RewardContext(CONSTITUTION, reward_model_dir=tmp_path, base_model_dir=tmp_path))


def test_an_unregistered_kind_is_a_clear_error(monkeypatch):
    monkeypatch.delitem(REWARD_KINDS, "judge", raising=False)
    settings = RewardSettings.model_validate({"components": [{"kind": "judge"}]})
    with pytest.raises(ValueError, match="reward kind 'judge' is not registered"):
        build_scorer(settings, RewardContext(CONSTITUTION))


def test_rewards_and_every_kind_import_without_torch():
    import subprocess
    import sys

    code = "import sys, rewards, rewards.checks, loop.rewards; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
