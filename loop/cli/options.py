"""What many commands take: the run folder (`--run-dir`, and opening its database) and a policy version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loop.cli.errors import fail
from loop.store import Store
from loop.store.database import NoRun, open_run_store

RunDir = Annotated[Path, typer.Option("--run-dir", help="Directory holding the run's database and adapters.")]
Config = Annotated[Path, typer.Option("--config", help="Run config YAML, e.g. configs/quickstart.yaml.")]


def policy_version(text: str) -> int:
    """`N` or `vN` as a version number; anything else is bad input."""
    try:
        return int(text.removeprefix("v"))
    except ValueError:
        fail(f"not a policy version: {text!r} (expected N or vN)")


def _no_run(run_dir: Path) -> str:
    return f"no run in {run_dir} (no cai.db); start one with `cai iterate --config FILE --run-dir {run_dir}`"


def open_run(run_dir: Path, *, write: bool) -> Store:
    """The run's checked store (`loop.store.database`); a folder with no run is refused, read-only opens write
    nothing."""
    if write and not (run_dir / "cai.db").is_file():
        raise NoRun(_no_run(run_dir))
    return open_run_store(run_dir, write=write)


def open_store(run_dir: Path) -> Store:
    """The run's store as it is (review and export read and write pairs only), or bad input without a run."""
    if not (run_dir / "cai.db").is_file():
        fail(_no_run(run_dir))
    return open_run_store(run_dir, write=True)
