"""Load a constitution: read each file, validate it (v1 or v2), resolve `extends`/`include`/`remove`, and
compile and test-render every template. Every problem has its FILE:LINE:COLUMN and a hint.

`load_constitution` raises on errors; `check_constitution` also returns the warnings (lint) for authors;
`load_constitution_or_last_good` is the hot-reload call of a long-running service.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from constitution.checks import Checks, refusal_conflicts
from constitution.problems import ConstitutionError, Problem
from constitution.schema import (
    FILE_KEYS_V2,
    Constitution,
    ConstitutionFile,
    ConstitutionFileV1,
    Principle,
)
from constitution.source import Loc, Source, resolve_constitution_path
from constitution.templates import TEMPLATE_FIELDS, VARIABLES, TemplateField, TemplateProblem, compile_template

log = logging.getLogger(__name__)

SAMPLE_INPUTS = {
    "prompt": "How do I stop a program that is stuck and not responding?",
    "response": "Open a terminal, find the program's process id with `ps`, and end it with `kill PID`.",
    "critique": "The response is direct and safe; it could mention `kill -9` for a process that ignores the signal.",
    "round": 0,
}
"""The inputs of the test render when a principle has no examples of its own."""

_V2_ONLY_PRINCIPLE_KEYS = {"title", "description", "tags", "applies_to", "positive_system_prompt",
                           "negative_system_prompt", "positive_prefix", "negative_prefix", "examples", "checks"}


@dataclass(frozen=True)
class Origin:
    """Where a principle of the resolved constitution was written."""

    source: Source
    index: int

    @property
    def loc(self) -> Loc:
        return ("principles", self.index)

    @property
    def key(self) -> tuple[Path, int]:
        """The same place read twice (a base two includes share) is the same origin."""
        return self.source.path.resolve(), self.index

    @property
    def line(self) -> int:
        return self.source.node(self.loc).start_mark.line + 1


@dataclass
class _Resolved:
    name: str | None
    description: str | None
    snippets: dict[str, str] = field(default_factory=dict)
    principles: dict[str, Principle] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    snippet_origins: dict[str, tuple[Source, Loc]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Checked:
    """A resolved constitution (None when there are errors), where each principle came from, and every
    problem found: errors and warnings."""

    constitution: Constitution | None
    origins: dict[str, Origin]
    files: tuple[Path, ...]
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def load_constitution(path: str | Path) -> Constitution:
    checked = check_constitution(path, lint=False)
    if checked.constitution is None:
        raise ConstitutionError(checked.errors)
    return checked.constitution


def load_constitution_or_last_good(path: str | Path,
                                   last_good: Constitution | None) -> tuple[Constitution, list[Problem]]:
    """For a service that reloads principles between iterations: the edited constitution if it loads, else
    the last good one together with the problems of the broken edit, so the service keeps going and raises an
    alarm. Without a last good version a broken file raises ConstitutionError (there is nothing to fall back on).
    """
    try:
        return load_constitution(path), []
    except ConstitutionError as exc:
        if last_good is None:
            raise
        log.warning("constitution %s is broken; keeping version %s: %s", path, last_good.content_hash, exc)
        return last_good, exc.problems


def check_constitution(path: str | Path, *, lint: bool = True) -> Checked:
    """Everything an author needs to know about a constitution file; never raises for a bad file."""
    problems: list[Problem] = []
    resolved = _resolve(resolve_constitution_path(path), (), problems)
    if resolved is None or any(p.severity == "error" for p in problems):
        return Checked(None, {}, (), tuple(problems))
    root = resolved.files[0]
    try:
        constitution = Constitution(name=resolved.name or root.stem, description=resolved.description or "",
                                    snippets=resolved.snippets, principles=list(resolved.principles.values()))
    except ValidationError:
        # Each file was valid on its own, so the only way to fail here is an empty result.
        problems.append(Problem(root, 1, 1, "principles", "no principles are left after extends, include and remove",
                                "add principles, or remove fewer"))
        return Checked(None, {}, tuple(resolved.files), tuple(problems))
    problems += _check_templates(constitution, resolved)
    problems += _check_refusal_conflicts(constitution, resolved)
    if lint and not any(p.severity == "error" for p in problems):
        from constitution.lint import lint_constitution

        problems += lint_constitution(constitution, resolved.origins)
    ok = not any(p.severity == "error" for p in problems)
    return Checked(constitution if ok else None, resolved.origins, tuple(resolved.files), tuple(problems))


def _resolve(path: Path, stack: tuple[Path, ...], problems: list[Problem]) -> _Resolved | None:
    try:
        source = Source.read(path)
    except ConstitutionError as exc:
        problems += exc.problems
        return None
    file = _validate(source, problems)
    if file is None:
        return None
    here = (*stack, path.resolve())
    resolved = _Resolved(name=None, description=None, files=[path])
    if file.extends:
        base = _resolve_reference(source, ("extends",), file.extends, here, problems)
        if base is None:
            return None
        resolved = base
        resolved.files.insert(0, path)
    included_from: dict[str, Path] = {}
    for index, reference in enumerate(file.include):
        part = _resolve_reference(source, ("include", index), reference, here, problems)
        if part is None:
            return None
        resolved.files += part.files
        for pid, principle in part.principles.items():
            earlier = included_from.get(pid)
            if earlier is not None and resolved.origins[pid].key != part.origins[pid].key:
                problems.append(source.problem(
                    ("include", index), f"principle {pid!r} is defined in both {earlier} and "
                                        f"{part.origins[pid].source.path}",
                    "the later include wins; rename one of them or `remove` the one you do not want",
                    severity="warning"))
            included_from[pid] = part.origins[pid].source.path
            resolved.principles[pid] = principle
            resolved.origins[pid] = part.origins[pid]
        resolved.snippets.update(part.snippets)
        resolved.snippet_origins.update(part.snippet_origins)
    for index, pid in enumerate(file.remove):
        if pid not in resolved.principles:
            problems.append(source.problem(("remove", index), f"no inherited principle {pid!r} to remove",
                                           _did_you_mean(pid, resolved.principles) or
                                           "`remove` drops principles that `extends` or `include` brought in"))
            continue
        del resolved.principles[pid]
        del resolved.origins[pid]
    for name, text in file.snippets.items():
        resolved.snippets[name] = text
        resolved.snippet_origins[name] = (source, ("snippets", name))
    for index, principle in enumerate(file.principles):
        # An override keeps the inherited principle's place, so editing one does not reorder sampling.
        resolved.principles[principle.id] = principle
        resolved.origins[principle.id] = Origin(source, index)
    resolved.name = file.name or resolved.name
    resolved.description = file.description if file.description is not None else resolved.description
    return resolved


def _resolve_reference(source: Source, loc: Loc, reference: str, here: tuple[Path, ...],
                       problems: list[Problem]) -> _Resolved | None:
    target = resolve_constitution_path(reference, source.path.parent)
    if target.resolve() in here:
        chain = " -> ".join(p.name for p in (*here[here.index(target.resolve()):], target.resolve()))
        problems.append(source.problem(loc, f"include cycle: {source.path} and {target} include each other "
                                            f"({chain})", "remove one of the two references"))
        return None
    if not target.is_file():
        problems.append(source.problem(loc, f"cannot read {target}: no such file",
                                       "paths are relative to the folder of this file; a bare name such as "
                                       "`default` means a shipped constitution"))
        return None
    return _resolve(target, here, problems)


def _validate(source: Source, problems: list[Problem]) -> ConstitutionFile | None:
    version = source.data.get("schema", 1)
    if version not in (1, 2):
        problems.append(source.problem(("schema",), f"unknown schema version {version!r}",
                                       "use `schema: 2`, or leave `schema` out for the v1 form"))
        return None
    model = ConstitutionFile if version == 2 else ConstitutionFileV1
    try:
        parsed = model.model_validate(source.data)
    except ValidationError as exc:
        problems += [_validation_problem(source, error, version) for error in exc.errors()]
        return None
    return parsed if isinstance(parsed, ConstitutionFile) else ConstitutionFile.from_v1(parsed)


def _validation_problem(source: Source, error: dict, version: int) -> Problem:
    loc: Loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    # Whole-list validators name the offending element in their message.
    if match := re.search(r"principles\[(\d+)\]", message):
        loc = ("principles", int(match.group(1)), "id")
    return source.problem(loc, message, _hint(error, loc, version), key=error["type"] == "extra_forbidden")


def _hint(error: dict, loc: Loc, version: int) -> str:
    kind, last = error["type"], loc[-1] if loc else ""
    if len(loc) >= 3 and loc[0] == "principles" and loc[2] == "checks" and version == 2:
        return _checks_hint(kind, loc[3:])
    if kind == "extra_forbidden" and isinstance(last, str):
        in_principle = len(loc) == 3 and loc[0] == "principles"
        if version == 1 and (last in _V2_ONLY_PRINCIPLE_KEYS if in_principle else last in FILE_KEYS_V2):
            return f"`{last}` needs schema v2: add `schema: 2` at the top of the file"
        known = list(Principle.model_fields) if in_principle else list(FILE_KEYS_V2)
        return _did_you_mean(last, known) or "allowed here: " + ", ".join(known)
    if kind == "missing":
        return f"add `{last}:`"
    if kind == "string_pattern_mismatch":
        return ("use lower-case words joined by hyphens, e.g. no-fabrication" if last != "snippets" and
                loc[0] != "snippets" else "snippet names are lower_case_with_underscores")
    if kind in ("greater_than", "float_parsing") and last == "weight":
        return "weights are relative and above 0; to drop a principle, `remove` it"
    if "duplicate principle id" in error["msg"]:
        return "ids must be unique within a file; to replace an inherited principle, reuse its id in the file " \
               "that extends it"
    if kind == "enum" and last == "category":
        return "v1 categories are harm, honesty, helpfulness; with `schema: 2` use free `tags`"
    if kind == "literal_error" and last == "schema":
        return "use `schema: 2`"
    return ""


def _checks_hint(kind: str, loc: Loc) -> str:
    """Hints for `checks:` and the values under it (`loc` is the part below `checks`)."""
    name = loc[0] if loc else ""
    if not loc:
        return "a mapping of checks, e.g. `checks: {refuses: true}`"
    if kind == "extra_forbidden":
        return _did_you_mean(str(name), Checks.model_fields) or "checks: " + ", ".join(Checks.model_fields)
    if name in ("refuses", "no_urls"):
        return f"`{name}` is true or false, unquoted"
    if name == "max_words":
        return "a whole number of words, at least 1"
    if kind == "value_error":
        return ("Python `re` syntax: escape a literal ( [ . * + ? with a backslash, and write patterns in single "
                "quotes so YAML keeps backslashes as written")
    if kind == "string_too_short":
        return "an empty pattern matches every answer: remove it"
    return f"a list of regular expressions, e.g. `{name}: ['\\bsorry\\b']`"


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean `{close[0]}`?" if close else ""


def sample_inputs(principle: Principle) -> list[dict[str, object]]:
    """The inputs a principle's templates are test-rendered with: its examples, else a built-in sample."""
    examples = [{"prompt": e.prompt, "response": e.response, "critique": e.critique, "round": 0}
                for e in principle.examples]
    return examples or [dict(SAMPLE_INPUTS)]


def render_on(principle: Principle, field_name: TemplateField, inputs: dict[str, object]) -> str:
    """Render one field on sample inputs, passing only the variables that field declares."""
    return principle.render(field_name, **{k: v for k, v in inputs.items() if k in VARIABLES[field_name]})


def _check_templates(constitution: Constitution, resolved: _Resolved) -> list[Problem]:
    """Compile and test-render every template at its origin; unknown snippets are errors, unused ones and
    unread `{% set %}` names warnings."""
    problems: list[Problem] = []
    used_snippets: set[str] = set()
    for principle in constitution.principles:
        origin = resolved.origins[principle.id]
        for name in TEMPLATE_FIELDS:
            text = getattr(principle, name)
            if text is None:
                continue
            loc = (*origin.loc, name)
            try:
                compiled = compile_template(text, VARIABLES[name])
                missing = sorted(compiled.snippets_used - set(constitution.snippets))
                if missing:
                    raise TemplateProblem(f"unknown snippet {missing[0]!r}", text.find(missing[0]),
                                          _did_you_mean(missing[0], constitution.snippets)
                                          or "defined snippets: " + (", ".join(constitution.snippets) or "none"))
                for inputs in sample_inputs(principle):
                    render_on(principle, name, inputs)
            except TemplateProblem as exc:
                problems.append(origin.source.problem(loc, exc.message, exc.hint, offset=exc.offset))
                continue
            used_snippets |= compiled.snippets_used
            problems += [origin.source.problem(loc, f"`{{% set {var} %}}` is never used", "remove it",
                                               severity="warning", offset=offset)
                         for var, offset in compiled.unused_assignments]
    for name in sorted(set(constitution.snippets) - used_snippets):
        source, loc = resolved.snippet_origins[name]
        problems.append(source.problem(loc, f"snippet {name!r} is never used",
                                       f"use it as {{{{ snippets.{name} }}}} or remove it", severity="warning"))
    return problems




def _check_refusal_conflicts(constitution: Constitution, resolved: _Resolved) -> list[Problem]:
    """An answer cannot both have to refuse and have to comply: two principles that apply to one prompt
    category must agree on `refuses` (reported at the later one's value)."""
    problems = []
    for earlier, later, shared in refusal_conflicts(constitution.principles):
        first, origin = resolved.origins[earlier.id], resolved.origins[later.id]
        where = ("every prompt category" if not shared else
                 ("category " if len(shared) == 1 else "categories ") + ", ".join(map(repr, shared)))
        says = {p.id: "true" if p.checks and p.checks.refuses else "false" for p in (earlier, later)}
        problems.append(origin.source.problem(
            (*origin.loc, "checks", "refuses"),
            f"principle {later.id!r} says refuses: {says[later.id]} and principle {earlier.id!r} "
            f"({first.source.path}:{first.line}) says refuses: {says[earlier.id]} for {where}",
            "an answer cannot both refuse and comply: change one value, or narrow `applies_to` so they do not share "
            "a category"))
    return problems
