"""Principle sampling: weighted, and reproducible from a key so that a re-run picks the same principles."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from constitution.schema import Constitution, Principle


class PrincipleSampler:
    def __init__(self, constitution: Constitution, seed: int = 0):
        self.constitution = constitution
        self.seed = seed

    def candidates(self, category: str | None = None) -> list[Principle]:
        """The principles a prompt of `category` may draw: those whose `applies_to` names it or is empty.
        When none applies the whole constitution is drawn from, so an unexpected category never stalls a run."""
        principles = self.constitution.principles
        if category is None:
            return principles
        return [p for p in principles if not p.applies_to or category in p.applies_to] or principles

    def sample(self, *key: object, category: str | None = None,
               where: Callable[[Principle], bool] | None = None) -> Principle:
        """The principle for one step, e.g. `sample(iteration, sample_id, "critique", round, category="harmful")`;
        with `where`, among the candidates it accepts (all candidates when it accepts none).

        The choice depends only on the seed, the key and the category, never on call order, so a crashed stage
        that is re-run, or a shard processed on another worker, draws the same principles.
        """
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        principles = self.candidates(category)
        if where is not None:
            principles = [p for p in principles if where(p)] or principles
        return rng.choices(principles, weights=[p.weight for p in principles], k=1)[0]
