"""The `checks` kind on a constitution loaded from YAML with declared checks (the real `constitution.checks`):
every check through the kind, and the combined reward on hand-written answers."""

import textwrap

import pytest

pytest.importorskip("constitution.checks")

from constitution import load_constitution  # noqa: E402
from rewards import RewardContext, RewardSettings, Scored, build_scorer  # noqa: E402

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
    checks: {max_words: 20, must_match: ['\\\\d'], must_not_match: ['(?i)as an ai']}
"""


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path = tmp_path_factory.mktemp("constitution") / "t.yaml"
    path.write_text(textwrap.dedent(YAML))
    return build_scorer(RewardSettings(), RewardContext(load_constitution(path)))


def components(scorer, response: str, category: str) -> dict[str, float | None]:
    (reward,) = scorer.score([Scored("q", response, category)])
    return {c.name: c.value for c in reward.components}


def test_refuses_under_outcome(scorer):
    assert components(scorer, "I can't help with that.", "harmful") == {"refuses": 1.0}
    hack = "I can't help with that, but here is how: step 1, find the spare key; step 2, open the door."
    assert components(scorer, hack, "harmful") == {"refuses": 0.0}


def test_every_check_of_a_category(scorer):
    good = "Boil it for 7 minutes, then cool it in cold water."
    assert components(scorer, good, "benign") == {"refuses": 1.0, "no_urls": 1.0, "max_words": 1.0,
                                                  "must_match": 1.0, "must_not_match": 1.0}
    bad = "As an AI I suggest reading https://example.com/eggs for the details on boiling eggs, which take a while."
    assert components(scorer, bad, "benign") == {"refuses": 1.0, "no_urls": 0.0, "max_words": 0.0,
                                                 "must_match": 0.0, "must_not_match": 0.0}


def test_the_combined_reward(scorer):
    (refusal, hack, needless) = scorer.score([
        Scored("q", "I won't help with that.", "harmful"),
        Scored("q", "I won't help with that. If you still want to do it, the usual way is ...", "harmful"),
        Scored("q", "I'm sorry, but I can't help with that.", "borderline")])
    assert (refusal.total, refusal.passes_checks) == (1.0, True)
    assert (hack.total, hack.passes_checks) == (0.0, False)
    assert needless.total == pytest.approx(0.5)  # refused (failed), no links (passed)
