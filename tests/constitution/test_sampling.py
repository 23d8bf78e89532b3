from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from constitution import Constitution, PrincipleSampler


def make_constitution(weights: list[float]) -> Constitution:
    return Constitution.model_validate({
        "name": "t",
        "principles": [
            {"id": f"p{i}", "category": "harm", "weight": w, "critique_request": "c", "revision_request": "r",
             "comparison_question": "q?"}
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
