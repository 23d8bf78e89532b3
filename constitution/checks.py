"""Checks a principle declares on its answers (rule-based rewards, RBR-style): the schema, running them on one
answer, and merging them per prompt category.

Torch-free and model-free: whether an answer refuses is decided by the caller (a refusal detector) and passed in,
so the same checks can be graded by different detectors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

if TYPE_CHECKING:
    from constitution.schema import Constitution


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return pattern


Pattern = Annotated[str, Field(min_length=1), AfterValidator(_compiles)]
URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"')\]]+|\bwww\.[a-z0-9-]+(?:\.[a-z0-9-]+)+[^\s<>\"')\]]*", re.IGNORECASE)
"""What `no_urls` forbids: a link with a scheme, or one starting with `www.`."""


class Checks(BaseModel):
    """What every answer under a principle must satisfy. Strict types: YAML's `1` is not `true` here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    refuses: Annotated[bool, Strict()] | None = None
    """True: the answer must refuse (harm principles); False: it must not (helpfulness ones)."""
    max_words: Annotated[int, Strict(), Field(ge=1)] | None = None
    must_match: tuple[Pattern, ...] = ()
    """Python regular expressions that must each be found somewhere in the answer."""
    must_not_match: tuple[Pattern, ...] = ()
    """Python regular expressions none of which may be found in the answer."""
    no_urls: Annotated[bool, Strict()] = False


@dataclass(frozen=True)
class CheckResult:
    name: str
    """"refuses" | "max_words" | "must_match" | "must_not_match" | "no_urls"."""
    passed: bool | None
    """None: cannot judge (a `refuses` check without a refusal verdict)."""
    detail: str


def _refuses(expected: bool, refuses: bool | None) -> CheckResult:
    wanted = "refusal expected" if expected else "no refusal expected"
    if refuses is None:
        return CheckResult("refuses", None, f"{wanted}, no refusal verdict given")
    return CheckResult("refuses", refuses == expected,
                       f"{wanted}, the answer " + ("refuses" if refuses else "complies"))


def _max_words(limit: int, response: str) -> CheckResult:
    words = len(response.split())
    return CheckResult("max_words", words <= limit, f"{words} words " + ("<=" if words <= limit else ">") + f" {limit}")


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _must_match(patterns: Sequence[str], response: str) -> CheckResult:
    missing = [p for p in patterns if re.search(p, response) is None]
    if missing:
        return CheckResult("must_match", False, "no match for " + ", ".join(map(repr, missing)))
    return CheckResult("must_match", True, f"all {len(patterns)} pattern(s) found")


def _must_not_match(patterns: Sequence[str], response: str) -> CheckResult:
    found = [(p, m.group(0)) for p in patterns if (m := re.search(p, response)) is not None]
    if found:
        return CheckResult("must_not_match", False,
                           "; ".join(f"{p!r} matches {_short(text)}" for p, text in found))
    return CheckResult("must_not_match", True, f"none of {len(patterns)} pattern(s) found")


def _no_urls(response: str) -> CheckResult:
    found = URL.search(response)
    if found:
        return CheckResult("no_urls", False, f"a link: {_short(found.group(0))}")
    return CheckResult("no_urls", True, "no links")


def run_checks(checks: Checks, response: str, refuses: bool | None) -> list[CheckResult]:
    """The result of every check that is set, in field order; `refuses` is the caller's verdict on the answer."""
    results = []
    if checks.refuses is not None:
        results.append(_refuses(checks.refuses, refuses))
    if checks.max_words is not None:
        results.append(_max_words(checks.max_words, response))
    if checks.must_match:
        results.append(_must_match(checks.must_match, response))
    if checks.must_not_match:
        results.append(_must_not_match(checks.must_not_match, response))
    if checks.no_urls:
        results.append(_no_urls(response))
    return results


def describe(checks: Checks) -> str:
    """One line for `cai principles show`: the checks that are set, as they are written in YAML."""
    set_values = checks.model_dump(exclude_defaults=True)
    if not set_values:
        return "none"
    def shown(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return "[" + ", ".join(map(repr, value)) + "]"
        return str(value)
    return "; ".join(f"{name}: {shown(value)}" for name, value in set_values.items())


class _HasChecks(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def applies_to(self) -> tuple[str, ...]: ...
    @property
    def checks(self) -> Checks | None: ...


def applies(principle: _HasChecks, category: str) -> bool:
    """A principle applies to the categories it lists; one that lists none applies to all."""
    return not principle.applies_to or category in principle.applies_to


def shared_categories(a: _HasChecks, b: _HasChecks) -> tuple[str, ...] | None:
    """The prompt categories both apply to; () means every category (neither lists any), None means none."""
    if not a.applies_to or not b.applies_to:
        shared = b.applies_to or a.applies_to
    else:
        shared = tuple(c for c in b.applies_to if c in a.applies_to)
        if not shared:
            return None
    return shared


def refusal_conflicts(principles: Iterable[_HasChecks]) -> list[tuple[_HasChecks, _HasChecks, tuple[str, ...]]]:
    """(earlier, later, shared categories) for each principle that wants the opposite `refuses` of an earlier one
    on some prompt category (the first such earlier one)."""
    declared = [p for p in principles if p.checks is not None and p.checks.refuses is not None]
    conflicts = []
    for index, later in enumerate(declared):
        for earlier in declared[:index]:
            shared = shared_categories(earlier, later)
            if earlier.checks.refuses != later.checks.refuses and shared is not None:  # type: ignore[union-attr]
                conflicts.append((earlier, later, shared))
                break  # one report per principle: the first it contradicts
    return conflicts


def category_checks(constitution: Constitution, category: str) -> Checks | None:
    """The checks an answer to a `category` prompt must pass: those of every principle that applies, merged
    (one `refuses`, any `no_urls`, the smallest `max_words`, every pattern). None when no principle with checks
    applies."""
    declared = [p.checks for p in constitution.principles if p.checks is not None and applies(p, category)]
    if not declared:
        return None
    refuses = {c.refuses for c in declared if c.refuses is not None}
    if len(refuses) > 1:
        # The loader rejects such a constitution; one built in code can still have it.
        raise ValueError(f"principles of {constitution.name!r} disagree on `refuses` for category {category!r}")
    limits = [c.max_words for c in declared if c.max_words is not None]
    return Checks(refuses=refuses.pop() if refuses else None, max_words=min(limits) if limits else None,
                  must_match=tuple(dict.fromkeys(p for c in declared for p in c.must_match)),
                  must_not_match=tuple(dict.fromkeys(p for c in declared for p in c.must_not_match)),
                  no_urls=any(c.no_urls for c in declared))
