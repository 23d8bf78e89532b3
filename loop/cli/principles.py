"""`cai principles check|show|diff|try`: validate, read, compare and try principle (constitution) files.

Problems are printed one a line as FILE:LINE:COLUMN: ..., for editors and CI; only `try` loads a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from constitution import check_constitution
from constitution.checks import describe
from constitution.diff import diff_constitutions
from constitution.loader import Checked, render_on, sample_inputs
from constitution.templates import TEMPLATE_FIELDS
from loop.cli.errors import fail
from loop.config import ConfigError
from loop.pipeline import principle_try
from policies.models import ModelNotFoundError
from policies.serving.vllm_client import ServerError


def _constitution_files(paths: list[Path]) -> list[Path]:
    files = [f for p in paths for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    if not files:
        typer.echo("error: no YAML files found in " + ", ".join(map(str, paths)))
        raise typer.Exit(code=1)
    return files


def _load_or_exit(path: str | Path) -> Checked:
    """A resolved constitution, or its problems printed one a line and exit code 1."""
    checked = check_constitution(path, lint=False)
    if checked.constitution is None:
        for problem in checked.errors:
            typer.echo(str(problem))
        raise typer.Exit(code=1)
    return checked


def check(
    paths: Annotated[list[Path], typer.Argument(help="YAML files or folders of them.")],
    strict: Annotated[bool, typer.Option("--strict", help="Exit with 2 when there are warnings.")] = False,
) -> None:
    """Validate principle files: FILE:LINE:COLUMN: error|warning: FIELD: PROBLEM (hint: ...).

    Exit code 0 when usable, 1 on errors, 2 on warnings with --strict.
    """
    errors = warnings = 0
    for file in _constitution_files(paths):
        checked = check_constitution(file)
        for problem in checked.problems:
            typer.echo(str(problem))
        errors += len(checked.errors)
        warnings += len(checked.warnings)
        if checked.constitution is not None:
            c = checked.constitution
            with_checks = sum(p.checks is not None for p in c.principles)
            typer.echo(f"{file}: ok: {len(c.principles)} principles from {len(set(checked.files))} file(s), "
                       f"hash {c.content_hash}" + (f", {with_checks} with checks" if with_checks else "")
                       + (f", {len(checked.warnings)} warning(s)" if checked.warnings else ""))
    if errors:
        raise typer.Exit(code=1)
    if warnings and strict:
        raise typer.Exit(code=2)


def show(
    path: Annotated[str, typer.Argument(help="A constitution file, or a shipped name such as `default`.")],
    principle_id: Annotated[str | None, typer.Option("--id", help="Only this principle.")] = None,
) -> None:
    """The resolved constitution (after extends/include/remove), each template rendered on its examples."""
    checked = _load_or_exit(path)
    c = checked.constitution
    principles = c.principles
    if principle_id is not None:
        principles = [p for p in principles if p.id == principle_id]
        if not principles:
            typer.echo(f"error: no principle {principle_id!r} in {path}; ids: " + ", ".join(p.id for p in c.principles))
            raise typer.Exit(code=1)
    total = sum(p.weight for p in c.principles)
    typer.echo(f"{c.name} (hash {c.content_hash}): {len(c.principles)} principles from "
               + ", ".join(dict.fromkeys(str(f) for f in checked.files)))
    if c.description:
        typer.echo(c.description)
    for name, text in c.snippets.items():
        typer.echo(f"snippet {name}: {text}")
    for p in principles:
        origin = checked.origins[p.id]
        typer.echo(f"\n[{p.id}] {p.title}".rstrip() + f"  ({origin.source.path}:{origin.line})")
        if p.description:
            typer.echo(f"  {p.description}")
        typer.echo(f"  tags: {', '.join(p.tags) or '-'}; applies to: {', '.join(p.applies_to) or 'all prompts'}; "
                   f"weight {p.weight:g} ({p.weight / total:.1%} of draws)")
        if p.checks is not None:
            typer.echo(f"  checks: {describe(p.checks)}")
        for number, inputs in enumerate(sample_inputs(p), start=1):
            label = f"example {number}" if p.examples else "built-in sample"
            typer.echo(f"  -- {label}: prompt {inputs['prompt']!r}, response {inputs['response']!r}")
            for field in TEMPLATE_FIELDS:
                if getattr(p, field) is None:
                    continue
                typer.echo(f"    {field}: {render_on(p, field, inputs)}")
            if p.examples:
                example = p.examples[number - 1]
                typer.echo(f"    critique: {example.critique}\n    revision: {example.revision}")


def diff(
    old: Annotated[str, typer.Argument(help="The constitution before (a file or a shipped name).")],
    new: Annotated[str, typer.Argument(help="The constitution after.")],
) -> None:
    """Added, removed and changed principles, and whether the content hash changes."""
    d = diff_constitutions(_load_or_exit(old).constitution, _load_or_exit(new).constitution)
    typer.echo(f"hash {d.old_hash} -> {d.new_hash}: " + ("changes" if d.hash_changes else "unchanged"))
    def shown(value: object) -> str:
        return "(not set)" if value is None else repr(value)

    for change in d.other:
        typer.echo(f"~ {change.field}: {shown(change.old)} -> {shown(change.new)}")
    for pid in d.added:
        typer.echo(f"+ {pid}")
    for pid in d.removed:
        typer.echo(f"- {pid}")
    for pid, changes in d.changed.items():
        typer.echo(f"~ {pid}: " + ", ".join(c.field for c in changes))
        for change in changes:
            typer.echo(f"    {change.field}:\n      - {shown(change.old)}\n      + {shown(change.new)}")
    if d.reordered:
        typer.echo("order changed (sampling draws change with it)")


def try_principle(
    principle_id: Annotated[str, typer.Argument(help="The principle's id.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The user request to try it on.")],
    config: Annotated[Path | None, typer.Option("--config", help="Run config YAML (model, generation, critique, "
                                                 "judge); default: SmolLM2 on transformers.")] = None,
    constitution: Annotated[str | None, typer.Option(
        "--constitution", help="A constitution file or shipped name (default: the config's).")] = None,
    response: Annotated[str | None, typer.Option(
        "--response", help="Critique this response instead of generating one.")] = None,
) -> None:
    """Render and run one critique -> revision under a principle, and the judge's verdict on the pair."""
    try:
        run_config = principle_try.config_for_try(config)
    except ConfigError as exc:
        fail(str(exc))
    c = _load_or_exit(constitution or run_config.constitution).constitution
    try:
        principle = c.get(principle_id)
    except KeyError:
        typer.echo(f"error: no principle {principle_id!r} in {c.name}; ids: " + ", ".join(p.id for p in c.principles))
        raise typer.Exit(code=1) from None
    try:
        policy, judge_model = principle_try.engines_for(run_config)
        principle_try.try_principle(principle, prompt, policy, judge_model, run_config, typer.echo,
                                    response=response)
    except (ModelNotFoundError, ServerError) as exc:
        fail(str(exc))
