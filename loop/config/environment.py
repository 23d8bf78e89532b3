"""`CAI_` environment variables: every one must mean something, and a bad value is blamed on its variable.

Config fields are overridden as `CAI_SECTION__FIELD` (see `loop.config`); a few other variables are read
elsewhere and listed in `OTHER_VARIABLES`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from pydantic import BaseModel

PREFIX = "CAI_"
DELIMITER = "__"
OTHER_VARIABLES = {
    "CAI_DEBUG": "show tracebacks on errors",
    "CAI_BROKER_URL": "the daemon's Redis broker (redis://HOST:PORT/DB); unset: an in-process broker",
    "CAI_DATABASE_URL": "the run's database (postgresql+psycopg://...); unset: RUN_DIR/cai.db (SQLite)",
    "CAI_DASHBOARD_TOKEN": "the operator token of `cai dashboard` (reviews and controls need it)",
    "CAI_TEST_THREADS": "torch threads in the test suite",
    "CAI_TRAINER_PARENT_PID": "set by the loop for its trainer children (they exit when that process is gone)",
}


def _sub_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    annotation = model.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def config_variables(model: type[BaseModel], prefix: str = PREFIX) -> list[str]:
    """Every variable that names a field of `model` (sections too: they take a JSON object)."""
    names = []
    for name in model.model_fields:
        variable = prefix + name.upper()
        names.append(variable)
        sub = _sub_model(model, name)
        if sub is not None:
            names += config_variables(sub, variable + DELIMITER)
    return names


def unknown_variables(model: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    """One line per `CAI_` variable that is neither a config field nor a known setting, with a suggestion."""
    known = set(config_variables(model)) | set(OTHER_VARIABLES)
    problems = []
    for variable in sorted(v for v in environ if v.upper().startswith(PREFIX)):
        if variable.upper() in known:
            continue
        close = difflib.get_close_matches(variable.upper(), known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see `Configuration` in the README"
        problems.append(f"unknown environment variable {variable}{hint}")
    return problems


def variable_for(loc: Sequence[str | int], environ: Mapping[str, str]) -> str | None:
    """The set variable that supplied the value at `loc` (the field or a section above it), if any."""
    upper = {v.upper(): v for v in environ}
    for depth in range(len(loc), 0, -1):
        name = PREFIX + DELIMITER.join(str(part).upper() for part in loc[:depth])
        if name in upper:
            return upper[name]
    return None
