from hypothesis import given
from hypothesis import strategies as st

from policies.batching import padded_tokens, plan_batches

lengths_strategy = st.lists(st.integers(1, 500), min_size=1, max_size=60)


@given(lengths_strategy, st.integers(1, 9), st.integers(0, 3), st.integers(0, 5), st.booleans())
def test_every_example_exactly_once_and_batches_bounded(lengths, batch_size, seed, epoch, bucketing):
    plan = plan_batches(lengths, batch_size, seed=seed, epoch=epoch, bucketing=bucketing)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in plan)
    assert plan == plan_batches(lengths, batch_size, seed=seed, epoch=epoch, bucketing=bucketing)


@given(lengths_strategy, st.integers(1, 9), st.integers(0, 3))
def test_bucketing_never_pads_more_than_a_random_split(lengths, batch_size, seed):
    bucketed = plan_batches(lengths, batch_size, seed=seed, epoch=0, bucketing=True)
    shuffled = plan_batches(lengths, batch_size, seed=seed, epoch=0, bucketing=False)
    # Chunks of the length-sorted examples are the padding-optimal split into fixed-size batches.
    assert padded_tokens(lengths, bucketed) <= padded_tokens(lengths, shuffled)


def test_epochs_reorder_batches():
    lengths = list(range(1, 41))
    assert plan_batches(lengths, 4, seed=0, epoch=0) != plan_batches(lengths, 4, seed=0, epoch=1)
