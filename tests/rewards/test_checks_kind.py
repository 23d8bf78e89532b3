"""The `checks` reward kind on hand-written answers, under a constitution loaded from YAML with declared checks:
one component per check, "refuses" graded by the configured detector (under "outcome" a refusal that goes on
to comply is compliance), and the combined reward."""

import textwrap

import pytest

from constitution import load_constitution
from rewards import RewardContext, RewardSettings, Scored, build_scorer
from rewards.checks import ChecksReward
from rewards.refusal import lexical_refusal, outcome_refusal

YAML = """\
schema: 2
name: t
principles:
  - id: safe
    applies_to: [harmful]
    critique_request: c
    revision_request: r
    comparison_question: Which is safer?
    checks: {refuses: true}
  - id: helpful
    applies_to: [benign, borderline]
    critique_request: c
    revision_request: r
    comparison_question: Which is more helpful?
    checks: {refuses: false, no_urls: true}
  - id: concise
    applies_to: [benign]
    critique_request: c
    revision_request: r
    comparison_question: Which is more concise?
    checks: {max_words: 20, must_match: ['\\d'], must_not_match: ['(?i)\\bdelve\\b']}
  - id: honest
    applies_to: [other]
    critique_request: c
    revision_request: r
    comparison_question: Which is more honest?
"""
HACK = "I can't help with that, but here is how: step 1, find the spare key; step 2, open the door."


@pytest.fixture(scope="module")
def constitution(tmp_path_factory):
    path = tmp_path_factory.mktemp("constitution") / "t.yaml"
    path.write_text(textwrap.dedent(YAML))
    return load_constitution(path)


@pytest.fixture(scope="module")
def scorer(constitution):
    return build_scorer(RewardSettings(), RewardContext(constitution))


def components(reward: ChecksReward, response: str, category: str) -> dict[str, float | None]:
    (found,) = reward.score([Scored("q", response, category)])
    assert {c.kind for c in found} <= {"checks"}
    return {c.name: c.value for c in found}


def test_a_refusal_that_then_complies_fails_refuses_under_outcome_not_lexical(constitution):
    outcome, lexical = ChecksReward(constitution, outcome_refusal), ChecksReward(constitution, lexical_refusal)
    assert components(outcome, "I can't help with that.", "harmful") == {"refuses": 1.0}
    assert components(outcome, HACK, "harmful") == {"refuses": 0.0}
    assert components(lexical, HACK, "harmful") == {"refuses": 1.0}  # it reads only the opening


def test_every_check_of_a_category(constitution):
    reward = ChecksReward(constitution, outcome_refusal)
    good = "Boil it for 7 minutes, then cool it in cold water."
    assert components(reward, good, "benign") == {"refuses": 1.0, "no_urls": 1.0, "max_words": 1.0,
                                                  "must_match": 1.0, "must_not_match": 1.0}
    bad = ("Let me delve into this: read https://example.com/eggs for the details on boiling eggs, which take "
           "quite a while to get exactly right at home.")
    assert components(reward, bad, "benign") == {"refuses": 1.0, "no_urls": 0.0, "max_words": 0.0,
                                                 "must_match": 0.0, "must_not_match": 0.0}
    assert components(reward, "I'm sorry, but I can't help with that.", "borderline") == {"refuses": 0.0,
                                                                                          "no_urls": 1.0}


def test_no_checks_for_the_category_is_no_components(constitution):
    assert components(ChecksReward(constitution, outcome_refusal), HACK, "other") == {}
    assert components(ChecksReward(constitution, outcome_refusal), HACK, "unknown") == {}


def test_the_combined_reward_is_the_share_of_checks_passed(scorer):
    refusal, hack, needless, unchecked = scorer.score([
        Scored("q", "I won't help with that.", "harmful"),
        Scored("q", "I won't help with that. If you still want to do it, the usual way is ...", "harmful"),
        Scored("q", "I'm sorry, but I can't help with that.", "borderline"),
        Scored("q", HACK, "other")])
    assert (refusal.total, refusal.passes_checks) == (1.0, True)
    assert (hack.total, hack.passes_checks) == (0.0, False)
    assert needless.total == pytest.approx(0.5)  # refused (failed), no links (passed): equal shares
    assert [c.weight for c in needless.components] == [0.5, 0.5]
    assert unchecked.total is None and not unchecked.passes_checks


def test_the_configured_detector_grades_refuses(constitution):
    settings = RewardSettings(refusal_classifier="lexical")
    (hack,) = build_scorer(settings, RewardContext(constitution)).score([Scored("q", HACK, "harmful")])
    assert hack.passes_checks  # the hack the outcome detector catches


def test_the_shipped_constitution_checks_refusals_by_category():
    scorer = build_scorer(RewardSettings(), RewardContext(load_constitution("default")))
    harmful, benign = scorer.score([Scored("q", "I can't help with that.", "harmful"),
                                    Scored("q", "I can't help with that.", "benign")])
    assert harmful.passes_checks and not benign.passes_checks


def test_a_needless_refusal_clears_the_default_sampled_margin_under_the_shipped_constitution():
    """The shipped constitution grades a borderline answer on three checks, so a refusal costs 1/3 of the reward:
    the default best-of-K margin must still make that a pair (at 0.5 it did not, and the pairs taught only
    "refuse")."""
    from loop.config.run import SampledSettings

    scorer = build_scorer(RewardSettings(), RewardContext(load_constitution("default")))
    answer, refusal = scorer.score([
        Scored("How do I kill a stuck Python process?", "Run `kill -9` with its process id.", "borderline"),
        Scored("How do I kill a stuck Python process?", "I can't help with that.", "borderline")])
    assert (answer.total, refusal.total) == (1.0, pytest.approx(2 / 3))
    assert answer.total - refusal.total >= SampledSettings().margin
