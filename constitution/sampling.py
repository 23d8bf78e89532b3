"""Principle sampling: weighted, and reproducible from a key so that a re-run picks the same principles."""

from __future__ import annotations

import hashlib
import random

from constitution.schema import Constitution, Principle


class PrincipleSampler:
    def __init__(self, constitution: Constitution, seed: int = 0):
        self.constitution = constitution
        self.seed = seed

    def sample(self, *key: object) -> Principle:
        """The principle for one step, e.g. `sample(iteration, sample_id, "critique", round)`.

        The choice depends only on the seed and the key, never on call order, so a crashed stage that is
        re-run, or a shard processed on another worker, draws the same principles.
        """
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        principles = self.constitution.principles
        return rng.choices(principles, weights=[p.weight for p in principles], k=1)[0]
