"""The stages of one iteration as records, in the order they run.

Each stage reads its inputs from the store, does its work with no transaction open, then writes its outputs and
its completion record (`IterationContext.complete`) in one transaction: a finished stage is never redone, and an
interrupted one leaves nothing behind. `cai iterate` (`loop.pipeline.iteration`) runs the records in order; the
daemon (`loop.service`) sends each stage's shards to the record's queue, split by samples where it says so.

Torch-free at import, so light readers (the broker, docs) may use it: stages import the model code when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loop.pipeline.names import Queue, StageName
from loop.pipeline.stages.critique import critique
from loop.pipeline.stages.evaluate import evaluate
from loop.pipeline.stages.generate import generate
from loop.pipeline.stages.judge import judge_revisions
from loop.pipeline.stages.pairs import build_pairs
from loop.pipeline.stages.train import train

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


@dataclass(frozen=True)
class Stage:
    name: StageName
    run: Callable[[IterationContext], None]
    queue: Queue
    """The broker queue of its shards (`loop.service.broker`)."""
    sharded_by_samples: bool
    """The daemon splits it into slices of the iteration's samples (`service.shard_size`); else one shard."""
    reads: tuple[str, ...]
    """The tables it reads and writes (besides its `stage_runs` row), for the docs and the dashboard."""
    writes: tuple[str, ...]
    gang: bool = False
    """The daemon splits it into one shard per node of a training gang (`train.nodes`), all run together."""


STAGES: dict[StageName, Stage] = {stage.name: stage for stage in (
    Stage(StageName.GENERATE, generate, Queue.INFER, True, reads=("samples",), writes=("samples", "contrasts")),
    Stage(StageName.CRITIQUE, critique, Queue.INFER, True, reads=("samples",), writes=("critiques", "samples")),
    Stage(StageName.JUDGE, judge_revisions, Queue.INFER, True, reads=("samples", "contrasts"),
          writes=("comparisons",)),
    Stage(StageName.PAIRS, build_pairs, Queue.CPU, False, reads=("samples", "contrasts", "comparisons", "pairs"),
          writes=("pairs", "metrics")),
    Stage(StageName.TRAIN, train, Queue.TRAIN, False,
          reads=("pairs", "samples", "runs", "policies", "iterations", "sampled_answers", "reward_scores"),
          writes=("policies", "replays", "metrics"), gang=True),
    Stage(StageName.EVALUATE, evaluate, Queue.INFER, False,
          reads=("policies", "iterations", "eval_responses", "eval_comparisons"),
          writes=("eval_responses", "eval_comparisons", "evaluations", "eval_metrics")),
)}
"""Keyed by name, in run order (the order of `StageName`)."""

if tuple(STAGES) != tuple(StageName):
    raise RuntimeError("the stage registry must list every StageName once, in StageName's order")
