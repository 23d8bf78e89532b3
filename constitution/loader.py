"""Load a constitution from YAML; every problem is reported as FILE:LINE: FIELD: PROBLEM."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from constitution.schema import Constitution

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConstitutionError(ValueError):
    """A constitution file that cannot be used; `problems` lists each one with its line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def resolve_constitution_path(name_or_path: str | Path) -> Path:
    """A bare name such as `default` means a shipped constitution; anything else is a path."""
    text = str(name_or_path)
    if re.fullmatch(r"[a-z0-9_-]+", text):
        shipped = Path(str(resources.files("principles").joinpath(f"{text}.yaml")))
        if shipped.is_file():
            return shipped
    return Path(text)


def load_constitution(path: str | Path) -> Constitution:
    path = resolve_constitution_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConstitutionError([Problem(path, None, "", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConstitutionError([Problem(path, line, "", f"invalid YAML: {exc.problem or exc}")]) from exc
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise ConstitutionError([Problem(path, line, "", "expected a mapping with `name` and `principles`")])

    duplicates = list(_duplicate_keys(root, path))
    if duplicates:
        raise ConstitutionError(duplicates)
    data = yaml.safe_load(text)
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError([_problem(path, root, err) for err in exc.errors()]) from exc


def _problem(path: Path, root: yaml.Node, error: dict) -> Problem:
    loc: Loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    # Errors raised by whole-list validators name the offending element in their message.
    if match := re.search(r"principles\[(\d+)\]", message):
        loc = ("principles", int(match.group(1)), "id")
    return Problem(path, _line_of(root, loc), _dotted(loc), message)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node, loc: Loc) -> int:
    """The 1-based line of the deepest node on `loc` that exists (a missing key points at its mapping)."""
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _duplicate_keys(node: yaml.Node, path: Path):
    """yaml.safe_load silently keeps the last of two equal keys; an author almost never means that."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                yield Problem(path, key.start_mark.line + 1, str(key.value), "duplicate key")
            seen.add(key.value)
            yield from _duplicate_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item, path)
