"""Read-only views of a run: `cai status` (an iteration's summary) and `cai metrics` (Prometheus text)."""

from __future__ import annotations

from typing import Annotated

import typer

from loop.cli.errors import fail, failures_reported
from loop.cli.options import RunDir, open_run
from loop.cli.output import setup_logging
from loop.cli.render import render_summary, show
from loop.operate.metrics import exposition
from loop.operate.summary import iteration_summary, latest_iteration
from loop.store.database import open_run_store


def status(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    iteration: Annotated[int | None, typer.Option(help="Iteration index (default: the latest).")] = None,
) -> None:
    """Summarise an iteration of a run from its database (reads only: creates and writes no file)."""
    setup_logging(None)
    with failures_reported():
        store = open_run_store(run_dir, write=False)
        try:
            with store.session() as session:
                found = latest_iteration(session, iteration)
                if found is None:
                    fail(f"no iteration {iteration if iteration is not None else ''} in {run_dir}".replace("  ", " "))
                summary = iteration_summary(session, found)
        finally:
            store.dispose()
    show(summary, as_json=as_json, render=render_summary)


def metrics(run_dir: RunDir) -> None:
    """Print the run's evaluation metrics and gate outcomes in the Prometheus text format."""
    with failures_reported():
        store = open_run(run_dir, write=False)
        try:
            typer.echo(exposition(store), nl=False)
        finally:
            store.dispose()
