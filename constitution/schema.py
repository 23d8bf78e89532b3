"""The principle schema: what a constitution file must contain."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PrincipleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=64)]


class PrincipleCategory(StrEnum):
    harm = "harm"
    honesty = "honesty"
    helpfulness = "helpfulness"


class Principle(BaseModel):
    """One principle: how the policy critiques and revises itself, and how the judge compares answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: PrincipleId
    category: PrincipleCategory
    weight: float = Field(default=1.0, gt=0, description="Relative sampling weight.")
    critique_request: Text
    revision_request: Text
    comparison_question: Text


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text
    description: str = ""
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        seen: set[str] = set()
        for index, principle in enumerate(principles):
            if principle.id in seen:
                # The message names the index so the loader can point at the duplicate's line.
                raise ValueError(f"duplicate principle id {principle.id!r} at principles[{index}]")
            seen.add(principle.id)
        return principles

    def get(self, principle_id: str) -> Principle:
        for principle in self.principles:
            if principle.id == principle_id:
                return principle
        raise KeyError(f"no principle {principle_id!r} in constitution {self.name!r}")

    @property
    def content_hash(self) -> str:
        """A version that changes exactly when the meaning changes (not formatting or comments)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
