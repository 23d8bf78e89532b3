from hypothesis import given
from hypothesis import strategies as st

from policies.training.batching import padded_tokens, plan_batches

lengths_strategy = st.lists(st.integers(1, 500), min_size=1, max_size=60)


@given(lengths_strategy, st.integers(1, 9), st.integers(0, 3), st.integers(0, 5), st.booleans())
def test_every_example_exactly_once_and_batches_bounded(lengths, batch_size, seed, epoch, bucketing):
    plan = plan_batches(lengths, batch_size, seed=seed, epoch=epoch, bucketing=bucketing)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in plan)
    assert plan == plan_batches(lengths, batch_size, seed=seed, epoch=epoch, bucketing=bucketing)


@given(lengths_strategy, st.integers(1, 9), st.integers(0, 3))
def test_bucketed_batches_do_not_overlap_in_length(lengths, batch_size, seed):
    # Each batch is a run of the length-sorted examples: no batch holds an example shorter than the longest of a
    # batch below it and longer than the shortest of one above it, which is what keeps padding small.
    plan = plan_batches(lengths, batch_size, seed=seed, epoch=0, bucketing=True)
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in plan)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:], strict=False))


def test_bucketing_cuts_padding_on_mixed_lengths():
    lengths = [10, 200] * 16
    bucketed = plan_batches(lengths, 4, seed=0, epoch=0, bucketing=True)
    shuffled = plan_batches(lengths, 4, seed=0, epoch=0, bucketing=False)
    assert padded_tokens(lengths, bucketed) == 4 * (4 * 10 + 4 * 200)  # 4 batches of 10s, 4 of 200s
    assert padded_tokens(lengths, shuffled) > padded_tokens(lengths, bucketed)


def test_epochs_reorder_batches():
    lengths = list(range(1, 41))
    assert plan_batches(lengths, 4, seed=0, epoch=0) != plan_batches(lengths, 4, seed=0, epoch=1)
