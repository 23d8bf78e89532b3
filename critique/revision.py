"""Critique → revision chains: the supervised half of Constitutional AI."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from constitution import PrincipleSampler
from critique.prompts import critique_conversation, revision_conversation
from policies.serving import Generator, Progress, SamplingParams


@dataclass(frozen=True)
class Draft:
    key: Hashable
    """Stable id of the sample; with the round it fixes which principle is drawn."""
    prompt: str
    response: str
    category: str | None = None
    """The prompt's category: principles are drawn among those that apply to it (None: all)."""


@dataclass(frozen=True)
class RevisionStep:
    round: int
    principle_id: str
    critique: str
    revision: str


def critique_and_revise(generator: Generator, sampler: PrincipleSampler, drafts: Sequence[Draft], *,
                        rounds: int, params: SamplingParams,
                        progress: Progress | None = None) -> list[list[RevisionStep]]:
    """For each draft, `rounds` steps of: draw a principle, critique the latest answer, revise it.

    All drafts advance one round together so every generation call is one large batch.
    """
    chains: list[list[RevisionStep]] = [[] for _ in drafts]
    answers = [d.response for d in drafts]
    for round_ in range(rounds):
        principles = [sampler.sample(d.key, "revise", round_, category=d.category) for d in drafts]
        critiques = generator.generate(
            [critique_conversation(d.prompt, a, p, round_)
             for d, a, p in zip(drafts, answers, principles, strict=True)],
            params, progress,
        )
        revisions = generator.generate(
            [revision_conversation(d.prompt, a, c, p, round_)
             for d, a, c, p in zip(drafts, answers, critiques, principles, strict=True)],
            params, progress,
        )
        for chain, principle, critique, revision in zip(chains, principles, critiques, revisions, strict=True):
            chain.append(RevisionStep(round_, principle.id, critique, revision))
        answers = revisions
    return chains
