"""Run config files: reading one (its YAML, the `CAI_` variables over it, every error one line naming the file or
variable and the place), resolving its relative paths, and writing the copy a run keeps."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError

from loop.config.environment import unknown_variables, variable_for
from loop.config.run import RunConfig
from loop.dataset_files import with_path
from policies.files import NotUtf8Error, atomic_write_text, read_utf8


class ConfigError(ValueError):
    pass


def yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> str:
    """A YAML error as one line, `FILE:LINE:COLUMN: invalid YAML: problem` (PyYAML's own spans several lines)."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, at an offset into the text
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"{path}:{line}:{column}: invalid YAML: character U+{exc.character:04X} is not allowed ({exc.reason})"
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(filter(None, [getattr(exc, "context", None), getattr(exc, "problem", None)])) or str(exc)
    return f"{where}: invalid YAML: {problem}"


def load_run_config(path: Path) -> RunConfig:
    """Read, validate and resolve a config file; relative paths become absolute against its folder.

    An unknown `CAI_` variable is refused, and a bad value from the environment names its variable.
    """
    environ = os.environ
    unknown = unknown_variables(RunConfig, environ)
    if unknown:
        raise ConfigError("\n".join(unknown))
    try:
        text = read_utf8(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except NotUtf8Error as exc:
        raise ConfigError(str(exc)) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, text, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (seed, model, prompts, ...), not "
                          f"{type(data).__name__}")
    try:
        config = RunConfig(**data)
    except ValidationError as exc:
        # One line per source (the file, or each environment variable), each naming every wrong field.
        problems: dict[str, list[str]] = {}
        for e in exc.errors():
            where = "environment variable " + variable if (variable := variable_for(e["loc"], environ)) else path
            message = e["msg"].removeprefix("Value error, ")
            problems.setdefault(str(where), []).append(f"{'.'.join(map(str, e['loc'])) or 'config'}: {message}")
        raise ConfigError("\n".join(f"{where}: {'; '.join(found)}" for where, found in problems.items())) from exc
    except SettingsError as exc:  # a section's variable that is not valid JSON
        field = str(exc).split('"')[1] if '"' in str(exc) else ""
        variable = variable_for([field], environ) if field else None
        raise ConfigError(f"environment variable {variable or 'CAI_' + field.upper()}: {exc.__cause__ or exc}") \
            from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    def absolute(p: Path) -> Path:
        return (base / p.expanduser()).resolve()

    constitution = config.constitution
    if "/" in constitution or constitution.endswith((".yaml", ".yml")):
        constitution = str(absolute(Path(constitution)))
    model = config.model
    if "/" in model.name:
        model = model.model_copy(update={"name": str(absolute(Path(model.name)))})
    prompts = config.prompts.model_copy(update={"files": [with_path(f, absolute) for f in config.prompts.files]})
    judge = config.judge
    # Only a local judge model is a path; a served model's name may contain "/" (org/model).
    if judge.model and "/" in judge.model and not config.generation.served:
        judge = judge.model_copy(update={"model": str(absolute(Path(judge.model)))})
    evaluation = config.evaluation
    refusal = evaluation.refusal
    evaluation = evaluation.model_copy(update={
        "sets": [s.model_copy(update={"file": with_path(s.file, absolute)}) for s in evaluation.sets],
        "refusal": refusal.model_copy(update={"labels": refusal.labels and absolute(refusal.labels)}),
    })
    return config.model_copy(update={
        "home": config.home.expanduser().resolve(), "constitution": constitution, "model": model,
        "prompts": prompts, "judge": judge, "evaluation": evaluation,
    })


def save_run_config(config: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
