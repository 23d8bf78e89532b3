"""Open a run directory's SQLite database only after checking that it is cai's and sound.

A damaged, foreign or newer database is refused with one line and left exactly as it is; an empty file is a new
run only while the run folder holds no policies; read-only opens never create or write a file.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from loop.store.models import SCHEMA_VERSION
from loop.store.session import SchemaTooNew, Store

SQLITE_HEADER = b"SQLite format 3\x00"
LEGACY_TABLES = {"runs", "iterations", "samples", "stage_runs"}
"""cai's tables from before the schema was versioned: such a database is cai's, version 0."""


class DatabaseRefused(RuntimeError):
    """The database cannot be used as it is; `bad_input` tells the CLI which exit code fits."""

    def __init__(self, message: str, *, bad_input: bool = True):
        super().__init__(message)
        self.bad_input = bad_input


class NoRun(DatabaseRefused):
    pass


def read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that creates and writes nothing: WAL files are read when a writer left them, otherwise the
    file is opened immutable (SQLite would otherwise create -wal and -shm files beside it)."""
    wal_files = all(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-shm"))
    uri = f"file:{path}?mode=ro" if wal_files else f"file:{path}?immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _adapters(run_dir: Path) -> list[str]:
    folder = run_dir / "policies"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def inspect_database(run_dir: Path) -> int | None:
    """The schema version of `run_dir/cai.db` (0 for cai's unversioned tables), or None when there is no run
    yet (no file, an empty file or an SQLite file with no tables). Raises DatabaseRefused otherwise."""
    path = run_dir / "cai.db"
    if not path.exists():
        return None
    if not path.is_file():
        raise DatabaseRefused(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        adapters = _adapters(run_dir)
        if adapters:
            raise DatabaseRefused(
                f"{path} is empty but {run_dir / 'policies'} holds {', '.join(adapters)}: the database was lost "
                "or truncated; restore it, or start a new run in another folder", bad_input=False)
        return None
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise DatabaseRefused(f"{path} is not an SQLite database (not cai's run database); "
                              "point --run-dir at a run folder, or a new one")
    try:
        connection = read_only_connection(path)
        try:
            check = [row[0] for row in connection.execute("PRAGMA quick_check")]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "cai_meta" in tables:
                row = connection.execute("SELECT value FROM cai_meta WHERE key = 'schema_version'").fetchone()
                version = int(row[0]) if row else 0
        finally:
            connection.close()
    except (sqlite3.DatabaseError, ValueError) as exc:
        raise DatabaseRefused(f"{path} is damaged ({exc}); restore it from a backup", bad_input=False) from exc
    if check != ["ok"]:
        first = check[0].splitlines()[-1] if check else "no answer"
        raise DatabaseRefused(f"{path} is damaged (SQLite quick_check: {first}); restore it from a backup",
                              bad_input=False)
    if version is not None:
        if version > SCHEMA_VERSION:
            raise DatabaseRefused(f"{path} has schema version {version}, newer than this cai reads "
                                  f"({SCHEMA_VERSION}); use a newer cai")
        return version
    if not tables:
        if _adapters(run_dir):
            raise DatabaseRefused(f"{path} holds no tables but {run_dir / 'policies'} holds adapters: the "
                                  "database was lost; restore it, or start a new run in another folder",
                                  bad_input=False)
        return None
    if tables >= LEGACY_TABLES:
        return 0
    raise DatabaseRefused(f"{path} is not a cai database (its tables: {', '.join(sorted(tables))}); "
                          "point --run-dir at a run folder, or a new one")


DATABASE_URL = "CAI_DATABASE_URL"


def database_url() -> str | None:
    """The run's database when it is not the run folder's SQLite file (PostgreSQL for the distributed service)."""
    return os.environ.get(DATABASE_URL) or None


def _no_run(run_dir: Path) -> NoRun:
    return NoRun(f"no run in {run_dir} (no cai.db with a run); "
                 f"start one with `cai iterate --config FILE --run-dir {run_dir}`")


def open_run_reader(run_dir: Path) -> Store:
    """A read-only store for a long-lived reader (the dashboard): a new connection per session, so each one sees
    what a writer committed since, and none creates or writes a file."""
    from sqlalchemy.pool import NullPool

    if database_url() is not None:  # a server database: every session already sees what was committed
        return open_run_store(run_dir, write=False)
    if inspect_database(run_dir) is None:
        raise _no_run(run_dir)
    path = run_dir / "cai.db"
    return Store("sqlite://", read_only=True, creator=lambda: read_only_connection(path), poolclass=NullPool)


def open_run_store(run_dir: Path, *, write: bool) -> Store:
    """The run's store after `inspect_database`. Read-only: refuses a folder with no run and writes nothing.

    With CAI_DATABASE_URL set, that database (one per run) instead of RUN_DIR/cai.db."""
    url = database_url()
    if url is not None:
        try:
            return Store(url, read_only=not write)
        except SchemaTooNew as exc:
            raise DatabaseRefused(f"{DATABASE_URL}: {exc}") from exc
    version = inspect_database(run_dir)
    path = run_dir / "cai.db"
    if not write:
        if version is None:
            raise _no_run(run_dir)
        return Store("sqlite://", read_only=True, creator=lambda: read_only_connection(path))
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return Store(f"sqlite:///{path}")
    except SchemaTooNew as exc:  # stamped by a newer cai between the check and the open
        raise DatabaseRefused(f"{path}: {exc}") from exc
