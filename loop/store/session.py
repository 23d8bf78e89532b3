"""The store's engine and sessions: how every room reads and writes the tables of `loop.store.models`.

Opening a store for writing brings its schema to head (`loop.store.migrations`) and stamps the schema version;
a database stamped by a newer cai is refused. Opening a run folder's database, checked first, is
`loop.store.database`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from loop.store.models import SCHEMA_VERSION, Meta


class SchemaTooNew(RuntimeError):
    pass


class Store:
    def __init__(self, url: str, *, read_only: bool = False, creator=None, poolclass=None):
        options: dict[str, Any] = {"creator": creator} if creator else {}
        if poolclass is not None:
            options["poolclass"] = poolclass
        if not url.startswith("sqlite"):
            # A server restarted under a long-running process leaves dead pooled connections: each checkout is
            # tested, so the first transaction after the restart gets a fresh one instead of failing.
            options["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **options)
        if self.engine.dialect.name == "sqlite" and not read_only:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if not read_only:
            # Imported here, not above: only writers migrate, and readers (status, the dashboard) skip Alembic.
            from loop.store.migrations import upgrade_to_head

            upgrade_to_head(self.engine)  # a new database is created at head, an older one upgraded in place
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.schema_version = self._check_schema_version(stamp=not read_only)

    def _check_schema_version(self, stamp: bool) -> int:
        """The stored schema version (stamped on first write); a newer one than this code knows is refused."""
        with self.session() as session:
            row = session.get(Meta, "schema_version") if self.has_table("cai_meta") else None
            if row is None:
                if not stamp:
                    return 0
                row = Meta(key="schema_version", value=str(SCHEMA_VERSION))
                session.add(row)
            version = int(row.value)
        if version > SCHEMA_VERSION:
            self.dispose()
            raise SchemaTooNew(f"the database has schema version {version}, newer than this cai reads "
                               f"({SCHEMA_VERSION}); use a newer cai")
        return version

    def has_table(self, name: str) -> bool:
        return inspect(self.engine).has_table(name)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def database_problem(exc: BaseException) -> str:
    """The driver's own first line of a database error, without SQLAlchemy's statement and link lines."""
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
