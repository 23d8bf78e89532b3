"""The principle schema: what a constitution file may contain (v2, and the v1 form it grew from).

A file is v2 when it says `schema: 2`; a file without `schema` is v1 and loads as before (its text is literal,
not a template). Both become the same resolved `Constitution`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

from constitution.checks import Checks
from constitution.templates import TEMPLATE_FIELDS, VARIABLES, TemplateField, render

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=64)]
PrincipleId = Slug
SnippetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class PrincipleCategory(StrEnum):
    """The v1 categories; in v2 they are tags like any other."""

    harm = "harm"
    honesty = "honesty"
    helpfulness = "helpfulness"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Example(_Frozen):
    """A worked example: shown by `cai principles show`, used as a few-shot turn before the critique."""

    prompt: Text
    response: Text
    critique: Text
    revision: Text


class Principle(_Frozen):
    """One principle: how the policy critiques and revises itself, and how the judge compares answers.

    The critique, revision and comparison fields and the two system prompts are Jinja2 templates (see
    `constitution.templates`): read them through `render`, never raw.
    """

    id: PrincipleId
    title: str = ""
    description: str = ""
    tags: tuple[Slug, ...] = ()
    """What the principle is about: harm, honesty, helpfulness, ..."""
    applies_to: tuple[Slug, ...] = ()
    """The prompt categories (harmful, borderline, benign, ...) it is sampled for; empty = all."""
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Relative sampling weight.")
    critique_request: Text
    revision_request: Text
    comparison_question: Text
    positive_system_prompt: Text | None = None
    """System prompt that steers towards the principle (the chosen side of a contrastive, RLCD-style pair)."""
    negative_system_prompt: Text | None = None
    """Near-identical wording that steers against it (the rejected side)."""
    positive_prefix: str | None = Field(default=None, min_length=1)
    """The opening of the preferred answer (plain text): the contrastive positive answer is prefilled with it,
    e.g. a refusal's first sentence on harmful requests. Use it only where the principle's `applies_to`
    categories fix how a good answer starts."""
    negative_prefix: str | None = Field(default=None, min_length=1)
    """The opening of the dispreferred answer, prefilled on the contrastive negative side."""
    examples: tuple[Example, ...] = ()
    checks: Checks | None = None
    """What every answer under this principle must pass (`constitution.checks`): rule-based rewards."""
    _snippets: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _category_is_a_tag(cls, data: Any) -> Any:
        """`category: X` (the v1 spelling) means `tags: [X]`, so code and files written for v1 keep working."""
        if isinstance(data, Mapping) and "category" in data and "tags" not in data:
            data = dict(data)
            data["tags"] = [data.pop("category")]
        return data

    @property
    def category(self) -> str | None:
        """The first tag (the v1 `category`)."""
        return self.tags[0] if self.tags else None

    def template_view(self) -> dict[str, object]:
        """What templates see as `principle`: plain data, never the model object itself."""
        return {"id": self.id, "title": self.title, "description": self.description, "tags": list(self.tags),
                "applies_to": list(self.applies_to), "weight": self.weight}

    def render(self, field: TemplateField, **values: object) -> str:
        """Render one template field with exactly the variables it declares (e.g. `prompt=`, `response=`)."""
        source = getattr(self, field)
        if source is None:
            raise ValueError(f"principle {self.id!r} has no {field}")
        allowed = VARIABLES[field]
        expected = allowed - {"principle", "snippets"}
        if set(values) != expected:
            raise TypeError(f"{field} takes exactly {sorted(expected)}, got {sorted(values)}")
        return render(source, {**values, "principle": self.template_view(), "snippets": dict(self._snippets)},
                      allowed)


def _unique_ids(principles: Sequence[Principle | PrincipleV1]) -> Sequence[Principle | PrincipleV1]:
    seen: set[str] = set()
    for index, principle in enumerate(principles):
        if principle.id in seen:
            # The message names the index so the loader can point at the duplicate's line.
            raise ValueError(f"duplicate principle id {principle.id!r} at principles[{index}]")
        seen.add(principle.id)
    return principles


UniqueIds = AfterValidator(_unique_ids)


class Constitution(_Frozen):
    """A resolved constitution: what the loop samples from and hashes."""

    name: Text
    description: str = ""
    snippets: dict[SnippetName, str] = Field(default_factory=dict)
    """Shared wording, available to every template as `snippets.NAME` (plain text, not rendered)."""
    principles: Annotated[list[Principle], UniqueIds] = Field(min_length=1)

    @model_validator(mode="after")
    def _share_snippets(self) -> Constitution:
        for principle in self.principles:
            principle._snippets = self.snippets
        return self

    def get(self, principle_id: str) -> Principle:
        for principle in self.principles:
            if principle.id == principle_id:
                return principle
        raise KeyError(f"no principle {principle_id!r} in constitution {self.name!r}")

    @property
    def content_hash(self) -> str:
        """A version that changes exactly when the meaning changes (not formatting, comments or file layout).

        The canonical form is the v1 one for what v1 could say, plus every v2 field that is not at its default,
        so a v1 file hashes as it did before v2 existed.
        """
        canonical = json.dumps(canonical_form(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_V1_PRINCIPLE_FIELDS = ("id", "weight", "critique_request", "revision_request", "comparison_question")


def canonical_form(constitution: Constitution) -> dict[str, object]:
    data = constitution.model_dump(mode="json")
    principles = []
    for principle, dumped in zip(constitution.principles, data["principles"], strict=True):
        out = {k: dumped[k] for k in _V1_PRINCIPLE_FIELDS}
        if len(principle.tags) == 1:
            out["category"] = principle.tags[0]
        else:
            out["tags"] = dumped["tags"]
        defaults = {name: field.get_default(call_default_factory=True)
                    for name, field in Principle.model_fields.items()}
        for name in Principle.model_fields:
            if name not in out and name != "tags" and getattr(principle, name) != defaults[name]:
                out[name] = dumped[name]
        if principle.checks is not None:
            # Only the checks that are set: a check kind added later does not move every hash.
            out["checks"] = principle.checks.model_dump(mode="json", exclude_defaults=True)
        principles.append(out)
    result: dict[str, object] = {"name": data["name"], "description": data["description"], "principles": principles}
    if constitution.snippets:
        result["snippets"] = data["snippets"]
    return result


class PrincipleV1(_Frozen):
    """A principle as schema v1 wrote it: four fixed strings and a category."""

    id: PrincipleId
    category: PrincipleCategory
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="Relative sampling weight.")
    critique_request: Text
    revision_request: Text
    comparison_question: Text

    def upgrade(self) -> Principle:
        return Principle(id=self.id, tags=(self.category.value,), weight=self.weight,
                         **{f: _literal(getattr(self, f)) for f in TEMPLATE_FIELDS[:3]})


def _literal(text: str) -> str:
    """v1 text is not a template: keep anything that looks like Jinja syntax literal."""
    if any(marker in text for marker in ("{{", "{%", "{#")):
        return "{% raw %}" + text + "{% endraw %}"
    return text


class ConstitutionFileV1(_Frozen):
    name: Text
    description: str = ""
    principles: Annotated[list[PrincipleV1], UniqueIds] = Field(min_length=1)


class ConstitutionFile(_Frozen):
    """One v2 file, before include/extends are resolved."""

    schema_version: Literal[2] = Field(alias="schema")
    name: Text | None = None
    """Default: the base constitution's name, else the file's name."""
    description: str | None = None
    extends: Text | None = None
    """A base constitution (a shipped name or a path relative to this file); this file overrides its
    principles by id and adds new ones."""
    include: tuple[Text, ...] = ()
    """More files whose principles and snippets are added (after the base, before this file's own)."""
    remove: tuple[PrincipleId, ...] = ()
    """Inherited principles to drop, by id."""
    snippets: dict[SnippetName, Text] = Field(default_factory=dict)
    principles: Annotated[tuple[Principle, ...], UniqueIds] = ()

    @classmethod
    def from_v1(cls, v1: ConstitutionFileV1) -> ConstitutionFile:
        return cls.model_validate({"schema": 2, "name": v1.name, "description": v1.description,
                                   "principles": [p.upgrade() for p in v1.principles]})


FILE_KEYS_V2 = tuple(f.alias or name for name, f in ConstitutionFile.model_fields.items())
