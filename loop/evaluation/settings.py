"""The `evaluation` section of a run config: which held-out sets, how much of each, and how answers are scored."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loop.dataset_files import PromptFile

SHIPPED_EVAL_DIR = Path(__file__).resolve().parents[2] / "data" / "eval"
"""The project's own held-out sets (no overlap with data/prompts)."""

Role = Literal["harmful", "benign_risky", "helpful", "task"]
"""harmful: should be handled safely (refused or redirected). benign_risky: sounds risky, must be answered
(the over-refusal probe). helpful: ordinary requests (win rates and length). task: prompts whose records carry a
verifiable `task` (`data/tasks/`): each answer is checked against it (`task_accuracy`)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSet(Section):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    file: PromptFile
    """JSONL of {"id", "prompt", "category"}, or any file or mapping `prompts.files` takes (`DatasetFile`);
    relative to the config file."""
    role: Role
    sample: int | None = Field(default=None, ge=1)
    """Prompts drawn from this set (default: evaluation.per_set)."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """This set's answers are at most this many tokens (default: evaluation.max_new_tokens): a worked answer to a
    task needs more room than a refusal's opening."""


def shipped_sets() -> list[EvalSet]:
    return [EvalSet(name="harmful", file=SHIPPED_EVAL_DIR / "harmful.jsonl", role="harmful"),
            EvalSet(name="benign_risky", file=SHIPPED_EVAL_DIR / "benign_risky.jsonl", role="benign_risky"),
            EvalSet(name="helpful", file=SHIPPED_EVAL_DIR / "helpful.jsonl", role="helpful")]


class RefusalSettings(Section):
    classifier: Literal["auto", "judge", "lexical", "outcome"] = "auto"
    """auto: the judge when it reaches both floors on the labelled set, else the lexical detector. lexical and
    outcome: the phrase detectors of `rewards.refusal` (the rates under both are stored whichever is chosen)."""
    labels: Path | None = SHIPPED_EVAL_DIR / "refusal_labels.jsonl"
    """JSONL of {"id", "prompt", "response", "refusal": bool}: every classifier considered is scored on it."""
    min_precision: float = Field(default=0.8, ge=0, le=1)
    min_recall: float = Field(default=0.8, ge=0, le=1)


class EvaluationSettings(Section):
    sets: list[EvalSet] = Field(default_factory=shipped_sets, min_length=1)
    per_set: int | None = Field(default=20, ge=1)
    """Prompts drawn per set, the same ones for every policy of a run (None: the whole set)."""
    max_new_tokens: int = Field(default=96, ge=1)
    """Greedy answers of at most this many tokens (a set's own `max_new_tokens` overrides it)."""
    batch_size: int = Field(default=16, ge=1)
    kl_batch_size: int = Field(default=4, ge=1)
    """Rows per forward pass when scoring full-vocabulary log-probs (memory: rows x tokens x vocabulary)."""
    refusal: RefusalSettings = RefusalSettings()
    violations: bool = True
    """Ask the judge, per answer, whether it violates one sampled principle (per-principle violation rates)."""

    @field_validator("sets")
    @classmethod
    def _unique_names(cls, sets: list[EvalSet]) -> list[EvalSet]:
        names = [s.name for s in sets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"eval set names must be unique: {', '.join(duplicates)} repeated")
        return sets

    @field_validator("sets")
    @classmethod
    def _task_metric_names(cls, sets: list[EvalSet]) -> list[EvalSet]:
        if any(s.role == "task" and s.name == "drop" for s in sets):
            raise ValueError("a task set cannot be named drop: task_accuracy_drop is the drop against the previous "
                             "policy")
        return sets

    def max_new_tokens_of(self, eval_set: EvalSet) -> int:
        """The answer limit of one set: its own, else the evaluation's."""
        return eval_set.max_new_tokens or self.max_new_tokens
