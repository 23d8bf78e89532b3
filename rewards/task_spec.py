"""The verifiable part of a prompt: an exact numeric answer and IFEval-style format constraints.

A prompt record carries it (`loop.prompts.PromptRecord.task`) and so does the item a reward scores
(`rewards.base.Scored.task`); the `task` reward kind (`rewards.tasks`) checks a response against it exactly, with
no model. A leaf: pydantic only, so both ends can import it without importing each other.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Phrase = Annotated[str, Field(min_length=1, pattern=r"\S")]
"""A non-blank string: a keyword, an ending, a JSON key."""


class _Constraint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: ClassVar[str]
    """The component name, `{value}` filled in (a list of keys joined by commas)."""

    @property
    def name(self) -> str:
        value = getattr(self, "value", None)
        return self.label.format(value=",".join(value) if isinstance(value, tuple) else value)


class _Count(_Constraint):
    value: int = Field(ge=1)


class MaxWords(_Count):
    kind: Literal["max_words"]
    label = "max_words<={value}"


class MinWords(_Count):
    kind: Literal["min_words"]
    label = "min_words>={value}"


class MaxSentences(_Count):
    kind: Literal["max_sentences"]
    label = "max_sentences<={value}"


class Bullets(_Count):
    """Exactly `value` markdown bullet lines (starting with "- " or "* ", indented or not)."""

    kind: Literal["bullets"]
    label = "bullets=={value}"


class Lowercase(_Constraint):
    """No capital letter anywhere."""

    kind: Literal["lowercase"]
    label = "lowercase"


class NoCommas(_Constraint):
    kind: Literal["no_commas"]
    label = "no_commas"


class Keyword(_Constraint):
    """The word (or phrase) occurs as a whole word, in any case."""

    kind: Literal["keyword"]
    value: Phrase
    label = "keyword:{value}"


class EndsWith(_Constraint):
    """The response's last non-space characters are exactly `value` (case included)."""

    kind: Literal["ends_with"]
    value: Phrase
    label = "ends_with:{value}"


class JsonKeys(_Constraint):
    """The whole response (optionally inside one ```json fence) is a JSON object holding these keys."""

    kind: Literal["json_keys"]
    value: tuple[Phrase, ...] = Field(min_length=1)
    label = "json_keys:{value}"


Constraint = Annotated[MaxWords | MinWords | MaxSentences | Lowercase | Keyword | EndsWith | Bullets | JsonKeys
                       | NoCommas, Field(discriminator="kind")]


class TaskSpec(BaseModel):
    """What a response to the prompt is checked against: an answer, constraints, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: float | None = Field(default=None, allow_inf_nan=False)
    """The exact numeric answer (`rewards.tasks.extract_number` reads the response's)."""
    constraints: tuple[Constraint, ...] = ()
    """Format constraints, each its own reward component (named by `name`, so no two may share one)."""

    @model_validator(mode="after")
    def _verifiable(self) -> TaskSpec:
        if self.answer is None and not self.constraints:
            raise ValueError("a task needs an answer or at least one constraint")
        names = [c.name for c in self.constraints]
        if len(set(names)) < len(names):
            raise ValueError(f"constraints repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        return self
