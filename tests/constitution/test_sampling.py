from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from constitution import Constitution, PrincipleSampler


def make_constitution(weights: list[float], applies_to: list[list[str]] | None = None) -> Constitution:
    return Constitution.model_validate({
        "name": "t",
        "principles": [
            {"id": f"p{i}", "tags": ["harm"], "weight": w, "critique_request": "c", "revision_request": "r",
             "comparison_question": "q?", "applies_to": applies_to[i] if applies_to else []}
            for i, w in enumerate(weights)
        ],
    })


weights = st.lists(st.floats(min_value=0.01, max_value=100), min_size=1, max_size=8)
keys = st.tuples(st.integers(), st.text(max_size=8), st.integers(0, 5))


@given(weights, keys, st.integers())
def test_same_key_same_principle_and_always_a_member(ws, key, seed):
    constitution = make_constitution(ws)
    first = PrincipleSampler(constitution, seed).sample(*key)
    assert first in constitution.principles
    assert PrincipleSampler(constitution, seed).sample(*key) == first


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=10), min_size=2, max_size=5))
def test_frequencies_follow_weights(ws):
    constitution = make_constitution(ws)
    sampler = PrincipleSampler(constitution, seed=1)
    n = 4000
    counts = Counter(sampler.sample("k", i).id for i in range(n))
    total = sum(ws)
    for i, w in enumerate(ws):
        expected = n * w / total
        # Binomial standard deviation; 5 sigma keeps the test from flaking while still catching a bias.
        sigma = (n * (w / total) * (1 - w / total)) ** 0.5
        assert abs(counts[f"p{i}"] - expected) <= 5 * sigma + 1


def test_different_keys_spread_over_principles():
    sampler = PrincipleSampler(make_constitution([1.0] * 4), seed=0)
    assert len({sampler.sample(i).id for i in range(100)}) == 4


categories = st.sampled_from(["harmful", "benign", "borderline"])
scopes = st.lists(st.lists(categories, max_size=2, unique=True), min_size=1, max_size=6)


@given(scopes, categories, keys, st.integers())
def test_category_sampling_is_keyed_and_stays_within_the_principles_that_apply(applies, category, key, seed):
    constitution = make_constitution([1.0] * len(applies), applies)
    sampler = PrincipleSampler(constitution, seed)
    chosen = sampler.sample(*key, category=category)
    assert chosen == PrincipleSampler(constitution, seed).sample(*key, category=category)
    applicable = [p for p in constitution.principles if not p.applies_to or category in p.applies_to]
    # When nothing applies, the whole constitution is drawn from rather than stalling the run.
    assert chosen in (applicable or constitution.principles)


def test_without_a_category_sampling_is_unchanged():
    """Existing runs keep their draws: the category is an optional narrowing, not a new key."""
    constitution = make_constitution([1.0, 2.0, 3.0], [["benign"], [], ["harmful"]])
    plain = PrincipleSampler(make_constitution([1.0, 2.0, 3.0]), seed=7)
    scoped = PrincipleSampler(constitution, seed=7)
    assert [scoped.sample(i).id for i in range(50)] == [plain.sample(i).id for i in range(50)]
    assert {scoped.sample(i, category="benign").id for i in range(200)} == {"p0", "p1"}


def test_shipped_constitution_draws_harm_principles_only_for_risky_prompts():
    from constitution import load_constitution

    sampler = PrincipleSampler(load_constitution("default"))
    benign = {sampler.sample(i, category="benign").id for i in range(500)}
    harmful = {sampler.sample(i, category="harmful").id for i in range(500)}
    assert "no-dangerous-uplift" in harmful and "no-dangerous-uplift" not in benign
    assert "no-overcautious-refusal" in benign and "no-overcautious-refusal" not in harmful
