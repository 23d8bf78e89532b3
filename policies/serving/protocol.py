"""How every other part talks to a model: the `Generator` protocol and the types it speaks.

Torch-free on purpose: `critique` and `loop` depend only on this, so the same iteration runs against a fake in
unit tests, HF transformers on CPU, or a vLLM server, and importing `critique` never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


Conversation = list[Message]
Progress = Callable[[int], None]
"""Called with the number of items just finished, for progress bars."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    seed: int | None = None


class Generator(Protocol):
    name: str
    """What produced the text (model and policy version), recorded next to every output."""

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 progress: Progress | None = None) -> list[str]:
        """One assistant reply per conversation. A conversation ending in an assistant message is continued."""
        ...

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        """For each conversation, the next-token log-probability of each choice (e.g. "A", "B")."""
        ...
