"""The names of the pipeline's stages and of the broker's queues, said once.

A leaf (no imports from the project), so the store, the broker and the dashboard can use them without loading
the stages. The values are the strings stored in the database (`stage_runs.stage`, `shard_claims.stage`,
`metrics.stage`) and used as dramatiq queue names: they must never change.
"""

from __future__ import annotations

from enum import StrEnum


class StageName(StrEnum):
    """The stages of one iteration, in the order they run."""

    GENERATE = "generate"
    CRITIQUE = "critique"
    JUDGE = "judge"
    PAIRS = "pairs"
    TRAIN = "train"
    EVALUATE = "evaluate"




class Queue(StrEnum):
    """The broker queues a stage's shards go to: model inference, training, CPU-only work."""

    INFER = "infer"
    TRAIN = "train"
    CPU = "cpu"
