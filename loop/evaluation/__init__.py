"""Evaluation of candidate policies on held-out sets: safe handling, over-refusal, win rates, KL, length,
principle violations. Light on import: the torch parts live in `kl` and `models`."""
