"""A scripted Generator for unit tests: records every conversation it is sent."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.serving import Conversation, Progress, SamplingParams


class ScriptedGenerator:
    name = "scripted"

    def __init__(self, reply: Callable[[Conversation], str] | None = None,
                 score: Callable[[Conversation, Sequence[str]], list[float]] | None = None):
        self.reply = reply or (lambda conversation: f"reply {len(conversation)}")
        self.score = score
        self.generated: list[Conversation] = []
        self.scored: list[Conversation] = []

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 progress: Progress | None = None) -> list[str]:
        self.generated.extend(conversations)
        if progress:
            progress(len(conversations))
        return [self.reply(c) for c in conversations]

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        assert self.score is not None
        self.scored.extend(conversations)
        return [self.score(c, choices) for c in conversations]
