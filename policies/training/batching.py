"""Which examples go into which micro-batch, and in what order: deterministic per (seed, epoch)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                 bucketing: bool = True) -> list[list[int]]:
    """Micro-batches of example indices covering every example exactly once.

    With `bucketing`, examples of similar length share a batch (sorted, then chunked), which cuts padding;
    the order of the batches is still shuffled per epoch so training does not see lengths in order.
    The plan depends only on (lengths, batch_size, seed, epoch), so a resumed run replays it exactly.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    indices = list(range(len(lengths)))
    if bucketing:
        # Longest first, so the one short batch (if any) holds the shortest examples.
        indices.sort(key=lambda i: (-lengths[i], i))
    else:
        rng.shuffle(indices)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if bucketing:
        rng.shuffle(batches)
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens computed when every batch is padded to its longest member."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
