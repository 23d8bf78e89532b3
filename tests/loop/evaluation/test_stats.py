"""Wilson intervals and win rates, against values computed by hand."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loop.evaluation.stats import precision_recall, wilson_interval, win_rate


def test_wilson_by_hand():
    # 8 of 10, z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.716738; half = 1.96 * sqrt(0.016 + 0.009604)
    # / 1.38416 = 0.226562  ->  (0.490176, 0.943300)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-4)
    assert high == pytest.approx(0.9433178, abs=1e-4)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(3.8415 / (20 + 3.8415), abs=1e-4)  # z^2 / (n + z^2)


@given(st.integers(1, 500), st.data())
def test_wilson_contains_the_estimate(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0 <= low <= k / n <= high <= 1


def test_win_rate_counts_wins_ties_and_position_consistency():
    verdicts = [
        (0.9, 0.8),   # win, both orders agree
        (0.7, 0.2),   # mean 0.45: loss; orders disagree (position bias)
        (0.5, 0.5),   # identical answers: tie
        (0.3, 0.1),   # loss, agree
    ]
    result = win_rate(verdicts)
    assert result.n == 4
    assert result.rate == pytest.approx(1.5 / 4)
    assert result.position_consistency == pytest.approx(2 / 4)
    assert (result.lower, result.upper) == pytest.approx(wilson_interval(1.5, 4))


def test_win_rate_of_nothing_is_undefined():
    result = win_rate([])
    assert math.isnan(result.rate) and (result.lower, result.upper) == (0.0, 1.0)


def test_precision_recall_by_hand():
    predicted = [True, True, False, False, True]
    actual = [True, False, True, False, True]
    assert precision_recall(predicted, actual) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert all(math.isnan(x) for x in precision_recall([False], [False]))
