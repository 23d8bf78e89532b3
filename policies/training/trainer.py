"""The one interface of every trainer, its one result type, and the registry of trainers keyed by kind.

A trainer module registers a builder with `@register_trainer(kind, parse=...)`: the builder wraps the language
model (with its trainable adapter) as the trainer needs and returns a `Trainer`; `parse` turns one JSONL record
of the spec's data file into the example type the trainer's `fit` takes. The entry point looks the kind up;
nothing branches on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from policies.training.optimization import StepLog

if TYPE_CHECKING:
    from policies.training.spec import TrainSpec

OnStep = Callable[[StepLog], None] | None


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, float]
    """Flat numbers recorded for the run (before/after evaluations, counts)."""
    steps: list[StepLog] = field(default_factory=list)
    """One entry per step taken in this process (a resumed run lists only the steps after the resume)."""


class Trainer(Protocol):
    heads: tuple[torch.nn.Module, ...]
    """Modules saved beside the adapter (each with a `save(directory)`), e.g. the reward model's head."""

    def fit(self, data: Sequence[Any], on_step: OnStep = None) -> TrainResult: ...


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets: the spec, the model with its trainable adapter, the tokenizer, and the options of the
    shared training loop (checkpoint folder, rank, world size, DeepSpeed config)."""

    spec: TrainSpec
    lm: Any
    tokenizer: Any
    loop_options: dict[str, Any]

    @property
    def settings(self):
        return getattr(self.spec, self.spec.kind)


@dataclass(frozen=True)
class TrainerEntry:
    build: Callable[[BuildContext], Trainer]
    parse: Callable[[Mapping[str, Any]], Any]


TRAINERS: dict[str, TrainerEntry] = {}


def register_trainer(kind: str, *, parse: Callable[[Mapping[str, Any]], Any]):
    def add(build: Callable[[BuildContext], Trainer]) -> Callable[[BuildContext], Trainer]:
        if kind in TRAINERS:
            raise ValueError(f"trainer kind {kind!r} is registered twice")
        TRAINERS[kind] = TrainerEntry(build, parse)
        return build

    return add
