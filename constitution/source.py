"""One YAML file of a constitution, kept with its node tree so any value can be traced to its line and column."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from constitution.problems import ConstitutionError, Problem

Loc = tuple[str | int, ...]


def resolve_constitution_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A bare name such as `default` means a shipped constitution; anything else is a path (relative to
    `relative_to`, the folder of the file that names it, when given)."""
    text = str(name_or_path)
    if re.fullmatch(r"[a-z0-9_-]+", text):
        shipped = Path(str(resources.files("principles").joinpath(f"{text}.yaml")))
        if shipped.is_file():
            return shipped
    path = Path(text).expanduser()
    return relative_to / path if relative_to is not None and not path.is_absolute() else path


@dataclass(frozen=True)
class Source:
    path: Path
    text: str
    root: yaml.MappingNode
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Source:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConstitutionError([Problem(path, None, None, "", f"cannot read file: {exc.strerror or exc}",
                                             "check the path")]) from exc
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise ConstitutionError([Problem(
                path, mark.line + 1 if mark else None, mark.column + 1 if mark else None, "",
                f"invalid YAML: {exc.problem or exc}",
                "check indentation, and quote text that contains ': ' or starts with a special character")
            ]) from exc
        if not isinstance(root, yaml.MappingNode):
            line = root.start_mark.line + 1 if root is not None else 1
            raise ConstitutionError([Problem(path, line, 1, "", "expected a mapping with `name` and `principles`",
                                             "see principles/default.yaml for the layout")])
        duplicates = list(_duplicate_keys(root, path))
        if duplicates:
            raise ConstitutionError(duplicates)
        return cls(path, text, root, yaml.safe_load(text))

    def node(self, loc: Loc, *, key: bool = False) -> yaml.Node:
        """The deepest node on `loc` that exists (a missing key gives its mapping); with `key`, the last
        mapping key itself rather than its value."""
        node: yaml.Node = self.root
        for depth, part in enumerate(loc):
            child = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                pair = next(((k, v) for k, v in node.value if k.value == part), None)
                child = pair and pair[0 if key and depth == len(loc) - 1 else 1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
        return node

    def problem(self, loc: Loc, message: str, hint: str = "", *, severity: str = "error",
                offset: int | None = None, key: bool = False) -> Problem:
        """A problem at `loc` (at its key with `key`); with `offset`, at that character of the scalar's value
        (a position in a template)."""
        node = self.node(loc, key=key)
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if offset is not None and isinstance(node, yaml.ScalarNode):
            line, column = self._position_in_scalar(node, offset)
        return Problem(self.path, line, column, dotted(loc), message, hint, severity)  # type: ignore[arg-type]

    def _position_in_scalar(self, node: yaml.ScalarNode, offset: int) -> tuple[int, int]:
        """Map a character of a scalar's value to the file: folding, indentation and quoting change only
        whitespace and delimiters, so the value's visible characters appear in the raw text in order."""
        raw_start, raw_end = node.start_mark.index, node.end_mark.index
        if node.style in (">", "|"):  # block scalars: the value starts on the line after the indicator
            raw_start = self.text.find("\n", raw_start) + 1
        cursor = raw_start
        for char in node.value[:offset + 1]:
            if char.isspace():
                continue
            found = self.text.find(char, cursor, raw_end)
            if found < 0:
                break
            cursor = found + 1
        index = max(cursor - 1, raw_start)
        line_start = self.text.rfind("\n", 0, index) + 1
        return self.text.count("\n", 0, index) + 1, index - line_start + 1


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _duplicate_keys(node: yaml.Node, path: Path):
    """yaml.safe_load silently keeps the last of two equal keys; an author almost never means that."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                yield Problem(path, key.start_mark.line + 1, key.start_mark.column + 1, str(key.value),
                              "duplicate key", "remove one of the two")
            seen.add(key.value)
            yield from _duplicate_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item, path)
