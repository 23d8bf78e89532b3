"""Fixtures shared by the loop tests."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from loop.store import Store

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty store on SQLite and on PostgreSQL (skipped where no server is reachable)."""
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'lease.db'}")
        yield store
        store.dispose()
        return
    pytest.importorskip("psycopg")
    name = f"cai_lease_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES + "postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server here: the SQLite half still runs
        pytest.skip(f"PostgreSQL at {POSTGRES} is not reachable: {exc}")
    store = Store(POSTGRES + name)
    try:
        yield store
    finally:
        store.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
