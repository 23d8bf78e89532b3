"""`cai cache list|clear`: the results kept under CAI_HOME across runs (`loop.cache`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loop.cache import ResultCache
from loop.cli.errors import fail
from loop.cli.output import out, size
from loop.config import RunConfig

Home = Annotated[Path, typer.Option("--home", envvar="CAI_HOME", help="The cache's home (CAI_HOME).")]
DEFAULT_HOME = RunConfig.model_fields["home"].default


def cache_list(home: Home = DEFAULT_HOME) -> None:
    """Each kind of kept result: entries, size on disk and when the newest was written."""
    cache = ResultCache(home)
    kinds = cache.kinds()
    if not kinds:
        out.print(f"nothing cached under {cache.root}", highlight=False)
        return
    table = Table(title=str(cache.root))
    for column in ("kind", "entries", "size", "newest"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind in kinds:
        newest = time.strftime("%Y-%m-%d %H:%M", time.localtime(kind.newest)) if kind.newest else "-"
        table.add_row(kind.kind, str(kind.entries), size(kind.bytes), newest)
    out.print(table)


def cache_clear(
    kind: Annotated[str | None, typer.Argument(help="One kind (see `cai cache list`); default: all.")] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """Remove kept results; the next run recomputes what it needs."""
    cache = ResultCache(home)
    try:
        removed = cache.clear(kind)
    except ValueError as exc:
        fail(str(exc))
    out.print(f"removed {removed} entries{f' of {kind}' if kind else ''} from {cache.root}", highlight=False)
