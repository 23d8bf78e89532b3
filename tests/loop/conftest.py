"""Fixtures shared by the loop tests."""

from __future__ import annotations

import pytest

from loop.store import Store
from tests.loop.services import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty store on SQLite and on PostgreSQL (skipped where no server is reachable)."""
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'lease.db'}")
        yield store
        store.dispose()
        return
    with postgres_database("cai_store_test") as url:
        store = Store(url)
        try:
            yield store
        finally:
            store.dispose()
