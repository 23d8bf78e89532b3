"""Principle templates: Jinja2 in an immutable sandbox, checked statically and by a test render at load time.

Templates are code written by principle authors and rendered with untrusted model text, so every template is
compiled in `ImmutableSandboxedEnvironment` with `StrictUndefined`, and on top of the sandbox:
- only the declared variables of its field exist (`prompt`, `response`, `critique`, `round`, `principle`,
  `snippets`), plus `range`; an unknown name is an error before anything runs;
- no private attributes, no method calls, no `attr` filter, no macros/imports/includes (statically rejected,
  which also closes the `str.format` escapes of CVE-2024-56326 and CVE-2025-27516 on top of Jinja2 >= 3.1.6);
- a small allow-list of filters; `*` and `**` are bounded so no single expression can build a huge value;
- every `for` loop checks a render deadline (CPU time), and the output is capped in size.
Every problem is a `TemplateProblem` with the offset in the template source where it is, so the loader can
point at FILE:LINE:COLUMN.
"""

from __future__ import annotations

import gc
import re
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Older releases have known sandbox escapes; refuse to render author templates with them.
if tuple(int(part) for part in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
    raise ImportError(f"Jinja2 >= 3.1.6 is required for the principle template sandbox, found {jinja2.__version__}")

TemplateField = Literal["critique_request", "revision_request", "comparison_question",
                        "positive_system_prompt", "negative_system_prompt"]
TEMPLATE_FIELDS: tuple[TemplateField, ...] = (
    "critique_request", "revision_request", "comparison_question", "positive_system_prompt",
    "negative_system_prompt")

_ALWAYS = frozenset({"principle", "snippets"})
VARIABLES: dict[TemplateField, frozenset[str]] = {
    "critique_request": _ALWAYS | {"prompt", "response", "round"},
    "revision_request": _ALWAYS | {"prompt", "response", "critique", "round"},
    "comparison_question": _ALWAYS | {"prompt"},
    "positive_system_prompt": _ALWAYS | {"prompt"},
    "negative_system_prompt": _ALWAYS | {"prompt"},
}
"""The variables each template may use; `principle` holds the principle's fields, `snippets` the constitution's
shared text."""

MAX_OUTPUT_CHARS = 100_000
RENDER_TIMEOUT_S = 0.25
ALLOWED_FILTERS = frozenset({
    "capitalize", "count", "d", "default", "first", "float", "int", "join", "last", "length", "lower", "replace",
    "round", "string", "striptags", "title", "trim", "truncate", "upper", "wordcount"})
_GUARD = "cai_loop_guard"
_FORBIDDEN_STATEMENTS: dict[type[nodes.Node], tuple[str, str]] = {
    nodes.Macro: ("macro", "macros"), nodes.CallBlock: ("call", "call blocks"),
    nodes.Include: ("include", "includes"), nodes.Import: ("import", "imports"),
    nodes.FromImport: ("from", "imports"), nodes.Extends: ("extends", "template inheritance"),
    nodes.Block: ("block", "blocks"),
}
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_OPENER = re.compile(r"\{\{|\{%|\{#")
_FOR_TAG = re.compile(r"\{%[-+]?\s*for\b")


@dataclass(frozen=True)
class TemplateProblem(Exception):
    message: str
    offset: int
    """Where in the template source the problem is (0 = the template as a whole)."""
    hint: str = ""

    def __str__(self) -> str:
        return self.message


class _Environment(ImmutableSandboxedEnvironment):
    # Intercepting these also stops Jinja from folding `9 ** 9 ** 9` at compile time.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and isinstance(left, int | float) and (
                abs(right) > 64 or abs(left) > 1 and abs(int(left)).bit_length() * abs(right) > 4096):
            raise SecurityError(f"{left} '**' {right} is over the size limit")
        if operator == "*":
            sized, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sized, str | list | tuple) and isinstance(times, int) \
                    and len(sized) * times > MAX_OUTPUT_CHARS:
                raise SecurityError(f"'*' would repeat a value {times} times, over the limit of "
                                    f"{MAX_OUTPUT_CHARS} characters")
        return super().call_binop(context, operator, left, right)


def _environment() -> _Environment:
    # Text without template syntax must come out exactly as written (v1 wording, YAML's trailing newline).
    env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters = {name: f for name, f in env.filters.items() if name in ALLOWED_FILTERS}
    env.globals = {"range": env.globals["range"]}  # the sandbox's range, capped at 100 000 items
    return env


ENV = _environment()


@dataclass(frozen=True)
class CompiledTemplate:
    source: str
    template: Any
    for_offsets: tuple[int, ...]
    """Offset of each `{% for` tag, in the order the loop guard numbers them."""
    snippets_used: frozenset[str]
    unused_assignments: tuple[tuple[str, int], ...]
    """`{% set NAME %}` that nothing reads: (name, offset)."""


def compile_template(source: str, allowed: frozenset[str]) -> CompiledTemplate:
    """Parse, check and compile; raises TemplateProblem. Cached, so the loop's renders compile nothing."""
    return _compile(source, allowed)


@lru_cache(maxsize=2048)
def _compile(source: str, allowed: frozenset[str]) -> CompiledTemplate:
    try:
        ast = ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", _syntax_offset(source, exc),
                              "check that every {{ has its }}, every {% its %} and every block its end tag") from None
    _check_nodes(source, ast)
    unknown = sorted(find_undeclared_variables(ast) - allowed)
    if unknown:
        name = unknown[0]
        raise TemplateProblem(f"unknown variable {name!r}", _find(source, rf"\b{re.escape(name)}\b"),
                              "available here: " + ", ".join(sorted(allowed)))
    for_offsets = tuple(m.start() for m in _FOR_TAG.finditer(source))
    for index, loop in enumerate(ast.find_all(nodes.For)):
        loop.iter = nodes.Call(nodes.Name(_GUARD, "load"), [loop.iter, nodes.Const(min(index, len(for_offsets) - 1))],
                               [], None, None, lineno=loop.lineno)
    ast.set_environment(ENV)
    return CompiledTemplate(source, ENV.from_string(ast), for_offsets, _snippets_used(ast),
                            _unused_assignments(source, ast))


def render(source: str, variables: Mapping[str, object], allowed: frozenset[str], *,
           timeout_s: float = RENDER_TIMEOUT_S, max_chars: int = MAX_OUTPUT_CHARS) -> str:
    """Render a template within the time and size limits; every failure is a TemplateProblem."""
    compiled = compile_template(source, allowed)
    # CPU time of this thread, not wall time: a busy machine that pauses the process must not fail a template.
    deadline = time.thread_time() + timeout_s

    def too_slow(offset: int) -> TemplateProblem:
        return TemplateProblem(f"rendering took over {timeout_s} s of CPU", offset,
                               "a loop runs too many times; loop over fewer items")

    def guard(items: Iterable[object], index: int) -> Iterator[object]:
        for n, item in enumerate(items):
            if n % 64 == 0 and time.thread_time() > deadline:
                raise too_slow(compiled.for_offsets[index])
            yield item

    parts: list[str] = []
    size = 0
    # A collection of a large heap (a loaded model's) inside the render would count as the template's CPU time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for chunk in compiled.template.generate(**variables, **{_GUARD: guard}):
            size += len(chunk)
            if size > max_chars:
                raise TemplateProblem(f"output is over the limit of {max_chars} characters", 0,
                                      "principle text should be short; loop over fewer items")
            if time.thread_time() > deadline:
                raise too_slow(0)
            parts.append(chunk)
    except TemplateProblem:
        raise
    except SecurityError as exc:
        raise TemplateProblem(f"unsafe template: {exc}", _runtime_offset(source, exc),
                              "templates may only read the declared variables") from None
    except UndefinedError as exc:
        raise TemplateProblem(f"undefined: {exc}", _runtime_offset(source, exc),
                              "use only the fields listed under `principle` and the snippets defined") from None
    except RecursionError:
        raise TemplateProblem("rendering recursed too deeply", 0, "") from None
    except Exception as exc:  # a template error of any kind (TypeError, ZeroDivisionError, ...) is the author's
        raise TemplateProblem(f"rendering failed: {type(exc).__name__}: {exc}", _runtime_offset(source, exc),
                              "") from None
    finally:
        if collecting:
            gc.enable()
    return "".join(parts)


def _check_nodes(source: str, ast: nodes.Template) -> None:
    for node in ast.find_all(nodes.Node):
        statement = _FORBIDDEN_STATEMENTS.get(type(node))
        if statement:
            keyword, what = statement
            raise TemplateProblem(f"{what} are not allowed in principle templates",
                                  _find(source, rf"\{{%[-+]?\s*{keyword}\b"),
                                  "put shared wording in `snippets` and use {{ snippets.NAME }}")
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            name = node.attr if isinstance(node, nodes.Getattr) else _const(node.arg)
            if isinstance(name, str) and name.startswith("_"):
                raise TemplateProblem(f"access to the private attribute {name!r} is not allowed",
                                      _find(source, re.escape(name)), "templates may only read declared variables")
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const | nodes.Slice):
            # A computed key could spell a private name that no static check sees (`x['__cl' ~ 'ass__']`).
            raise TemplateProblem("computed subscripts are not allowed", _find(source, r"\["),
                                  "index with a constant, e.g. {{ principle.tags[0] }}")
        if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
            message = ("the attr filter is not allowed" if node.name == "attr"
                       else f"unknown or disallowed filter {node.name!r}")
            raise TemplateProblem(message, _find(source, rf"\|\s*{re.escape(node.name)}\b"),
                                  "allowed filters: " + ", ".join(sorted(ALLOWED_FILTERS)))
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            name = node.node.attr
            raise TemplateProblem(f"method calls are not allowed ({name!r})",
                                  _find(source, rf"\.\s*{re.escape(name)}\s*\("),
                                  "use a filter instead, e.g. {{ prompt | trim }} or {{ prompt | upper }}")


def _const(node: nodes.Node) -> object:
    return node.value if isinstance(node, nodes.Const) else None


def _snippets_used(ast: nodes.Template) -> frozenset[str]:
    used = set()
    for node in ast.find_all(nodes.Getattr | nodes.Getitem):
        if isinstance(node.node, nodes.Name) and node.node.name == "snippets":
            name = node.attr if isinstance(node, nodes.Getattr) else _const(node.arg)
            if isinstance(name, str):
                used.add(name)
    return frozenset(used)


def _unused_assignments(source: str, ast: nodes.Template) -> tuple[tuple[str, int], ...]:
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx == "store"}
    read = {n.name for n in ast.find_all(nodes.Name) if n.ctx == "load"}
    loop_vars = {n.name for loop in ast.find_all(nodes.For) for n in loop.target.find_all(nodes.Name)}
    return tuple((name, _find(source, rf"\b{re.escape(name)}\b"))
                 for name in sorted(assigned - read - loop_vars))


def _find(source: str, pattern: str, start: int = 0) -> int:
    match = re.compile(pattern).search(source, start)
    return match.start() if match else 0


def _line_start(source: str, lineno: int) -> int:
    offset = 0
    for _ in range(max(lineno, 1) - 1):
        found = source.find("\n", offset)
        if found < 0:
            break
        offset = found + 1
    return offset


def _syntax_offset(source: str, error: TemplateSyntaxError) -> int:
    """The tag a syntax error is in: the first tag whose prefix fails to parse for a reason other than an
    unfinished block; else an opener that is never closed; else the block opener that is never ended."""
    tags = list(_TAG.finditer(source))
    parsed_up_to = 0
    for tag in tags:
        try:
            ENV.parse(source[:tag.end()])
        except TemplateSyntaxError as exc:
            if "end of template" not in exc.message.lower():
                return tag.start()
            continue
        parsed_up_to = tag.end()
    for opener in _OPENER.finditer(source):
        if not any(t.start() <= opener.start() < t.end() for t in tags):
            return opener.start()
    unfinished = [t for t in tags if t.start() >= parsed_up_to]
    return unfinished[0].start() if unfinished else _line_start(source, error.lineno)


def _runtime_offset(source: str, exc: BaseException) -> int:
    """The template line from the (Jinja-rewritten) traceback, narrowed to the name the message quotes."""
    lineno = next((line for frame, line in traceback.walk_tb(exc.__traceback__)
                   if frame.f_code.co_filename == "<template>"), 1)
    start = _line_start(source, lineno)
    quoted = re.findall(r"'([A-Za-z_]\w*|\*\*?)'", str(exc))
    for name in reversed(quoted):
        pattern = rf"\b{name}\b" if name[0].isalpha() or name[0] == "_" else rf"(?<!\*){re.escape(name)}(?!\*)"
        found = re.compile(pattern).search(source, start)
        if found:
            return found.start()
    return start
