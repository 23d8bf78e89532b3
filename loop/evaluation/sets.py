"""Held-out eval sets: prompt files (the same formats, mappings and errors as the training prompts), sampled
once per run so every policy answers the same prompts."""

from __future__ import annotations

from dataclasses import dataclass

from loop.dataset_files import path_of
from loop.evaluation.settings import EvalSet, EvaluationSettings
from loop.prompts import PromptFileError, PromptRecord, load_prompts, select_prompts


@dataclass(frozen=True)
class EvalPrompt:
    set: EvalSet
    record: PromptRecord


def eval_prompts(settings: EvaluationSettings, seed: int) -> list[EvalPrompt]:
    """The prompts every policy of a run answers: a fixed draw per set (the seed, not the iteration, picks it)."""
    chosen = []
    for eval_set in settings.sets:
        pool = load_prompts([eval_set.file])
        untasked = [r.id for r in pool if eval_set.role == "task" and r.task is None]
        if untasked:
            raise PromptFileError(f"{path_of(eval_set.file)}: eval set {eval_set.name} has role task, but "
                                  f"{len(untasked)} of its prompts have no `task` to check the answer against "
                                  f"(first: {untasked[0]})")
        count = eval_set.sample or settings.per_set or len(pool)
        # Sorted by id so the order, and so the batches, do not depend on the draw.
        for record in sorted(select_prompts(pool, count, seed, 0), key=lambda r: r.id):
            chosen.append(EvalPrompt(eval_set, record))
    return chosen


def check_eval_inputs(settings: EvaluationSettings, seed: int) -> None:
    """Read every eval set and the refusal labels: a bad file raises PromptFileError (FILE:LINE: problem)."""
    from loop.evaluation.refusal import load_labels

    eval_prompts(settings, seed)
    if settings.refusal.labels is not None:
        load_labels(settings.refusal.labels)
