"""Alembic migrations: a new database is made at head, and a database of the schema before migrations (a run
folder of an older cai, or a PostgreSQL database) is upgraded in place with its data kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, select

from loop.store import Base, ControlRequest, Pair, Run, Sample, ShardClaim, StageRun, Store
from loop.store.database import open_run_store
from loop.store.migrations import BASELINE_TABLES, current, head
from tests.loop.services import postgres_database

MAIN_SCHEMA = Path(__file__).parent / "fixtures" / "schema-main-v1.sql"
"""A run database as the last cai before migrations wrote it (its SQL dump), with one row of each kind."""


def _differences(store: Store) -> list:
    """What the database lacks or has beyond the models (an empty list: it is exactly the models' schema)."""
    with store.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_a_new_database_is_made_at_head_with_every_table(store):
    assert current(store.engine) == head()
    assert _differences(store) == []


def test_a_run_folder_from_before_migrations_is_upgraded_in_place_with_its_data(tmp_path):
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    connection = sqlite3.connect(run_dir / "cai.db")
    connection.executescript(MAIN_SCHEMA.read_text())
    connection.close()
    store = open_run_store(run_dir, write=True)
    try:
        assert current(store.engine) == head()
        assert _differences(store) == []
        with store.session() as session:
            assert session.scalar(select(Run.name)) == "old-run"
            assert session.scalar(select(Sample.revision)) == "I can't help with that."
            assert session.scalar(select(Pair.target)) == 0.65
            assert session.scalar(select(StageRun.wall_s)) == 1.5
            assert session.scalar(select(ControlRequest.outcome)) == "paused"
            assert session.scalar(select(ShardClaim)) is None  # the new table is there, empty
    finally:
        store.dispose()
    reopened = open_run_store(run_dir, write=True)  # a second open finds it at head and changes nothing
    assert current(reopened.engine) == head()
    reopened.dispose()


def test_a_postgresql_database_from_before_migrations_is_upgraded_with_its_data():
    with postgres_database("cai_migration_test") as url:
        engine = create_engine(url)  # the tables of the schema before migrations, as the older cai made them
        Base.metadata.create_all(engine, tables=[Base.metadata.tables[name] for name in BASELINE_TABLES])
        with engine.begin() as connection:
            connection.execute(Run.__table__.insert().values(name="old-run", config={}, current_policy=0))
        engine.dispose()
        store = Store(url)
        try:
            assert current(store.engine) == head()
            assert _differences(store) == []
            with store.session() as session:
                assert session.scalar(select(Run.name)) == "old-run"
        finally:
            store.dispose()
