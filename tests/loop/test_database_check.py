"""A run folder's database is checked before use: damaged, foreign, newer or lost databases are refused with one
line and left as they were; read-only commands create and write nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.store import SCHEMA_VERSION, Iteration, Meta, Policy, Run
from loop.store.database import DatabaseRefused, NoRun, inspect_database, open_run_store
from tests.loop.runs import folder_digest


def make_run(run_dir: Path) -> Path:
    """A closed run database with one finished iteration and the adapter folder it names."""
    store = open_run_store(run_dir, write=True)
    with store.session() as session:
        run = Run(name=run_dir.name, config={}, current_policy=1)
        session.add(run)
        session.flush()
        iteration = Iteration(run_id=run.id, index=1, status="done", policy_version=0, constitution_hash="c0")
        session.add(iteration)
        session.flush()
        session.add_all([Policy(run_id=run.id, version=0, parent_version=None, adapter_path=None),
                         Policy(run_id=run.id, version=1, parent_version=0, adapter_path="policies/v1",
                                iteration_id=iteration.id)])
    store.dispose()
    (run_dir / "policies" / "v1").mkdir(parents=True)
    (run_dir / "policies" / "v1" / "adapter_model.safetensors").write_bytes(b"weights")
    return run_dir / "cai.db"


def test_a_new_database_is_stamped_with_the_schema_version(tmp_path):
    make_run(tmp_path / "run")
    assert inspect_database(tmp_path / "run") == SCHEMA_VERSION
    connection = sqlite3.connect(tmp_path / "run" / "cai.db")
    assert connection.execute("SELECT value FROM cai_meta WHERE key = 'schema_version'").fetchone() == ("1",)
    connection.close()


@pytest.mark.parametrize("damage, message, bad_input", [
    (lambda db: db.write_bytes(b"this is not a database\n" * 50), "is not an SQLite database", True),
    (lambda db: db.write_bytes(db.read_bytes()[:9000]), "is damaged", False),
    (lambda db: db.write_bytes(db.read_bytes()[:100] + b"\x00" * (len(db.read_bytes()) - 100)), "is damaged",
     False),
    (lambda db: db.write_bytes(b""), "is empty but .*policies holds v1: the database was lost", False),
])
def test_damaged_databases_are_refused_and_left_as_they_are(tmp_path, damage, message, bad_input):
    db = make_run(tmp_path / "run")
    damage(db)
    before = folder_digest(tmp_path / "run")
    with pytest.raises(DatabaseRefused, match=message) as refused:
        open_run_store(tmp_path / "run", write=True)
    assert refused.value.bad_input is bad_input
    assert folder_digest(tmp_path / "run") == before


def test_foreign_and_newer_databases_are_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    connection = sqlite3.connect(foreign / "cai.db")
    connection.execute("CREATE TABLE invoices (id INTEGER)")
    connection.commit()
    connection.close()
    with pytest.raises(DatabaseRefused, match=r"is not a cai database \(its tables: invoices\)"):
        open_run_store(foreign, write=True)

    db = make_run(tmp_path / "newer")
    connection = sqlite3.connect(db)
    connection.execute("UPDATE cai_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    with pytest.raises(DatabaseRefused, match=f"schema version {SCHEMA_VERSION + 1}, newer than this cai reads"):
        open_run_store(tmp_path / "newer", write=True)


def test_an_empty_file_is_a_new_run_only_without_policies(tmp_path):
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "cai.db").write_bytes(b"")
    store = open_run_store(tmp_path / "fresh", write=True)
    with store.session() as session:
        assert session.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
    store.dispose()


def test_an_unversioned_cai_database_is_read_and_then_stamped(tmp_path):
    """Runs made before the schema was versioned (cai's tables, no cai_meta) are cai's, version 0."""
    db = make_run(tmp_path / "run")
    connection = sqlite3.connect(db)
    # Also the tables and the migration stamp that came later still: such a database had none of them.
    for table in ("cai_meta", "run_leases", "iteration_inputs", "control_requests", "shard_claims",
                  "constitution_versions", "alembic_version"):
        connection.execute(f"DROP TABLE {table}")
    connection.commit()
    connection.close()
    assert inspect_database(tmp_path / "run") == 0
    open_run_store(tmp_path / "run", write=True).dispose()
    assert inspect_database(tmp_path / "run") == SCHEMA_VERSION


@pytest.mark.parametrize("prepare", ["missing", "empty", "empty sqlite", "foreign", "garbage", "run"])
def test_status_creates_and_writes_nothing(tmp_path, prepare):
    run_dir = tmp_path / "run"
    if prepare != "missing":
        run_dir.mkdir()
    if prepare == "empty":
        (run_dir / "cai.db").write_bytes(b"")
    elif prepare == "empty sqlite":
        sqlite3.connect(run_dir / "cai.db").close()
    elif prepare == "foreign":
        connection = sqlite3.connect(run_dir / "cai.db")
        connection.execute("CREATE TABLE invoices (id INTEGER)")
        connection.commit()
        connection.close()
    elif prepare == "garbage":
        (run_dir / "cai.db").write_bytes(b"\x01" * 4096)
    elif prepare == "run":
        make_run(run_dir)
    before = folder_digest(run_dir) if run_dir.exists() else None
    result = CliRunner().invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    after = folder_digest(run_dir) if run_dir.exists() else None
    assert after == before and not (run_dir / "cai.log").exists()
    if prepare == "run":
        assert result.exit_code == 0, result.output
        assert '"policy_version": "v1"' in result.output
        return
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    expected = {"missing": "no run in", "empty": "no run in", "empty sqlite": "no run in",
                "foreign": "is not a cai database", "garbage": "is not an SQLite database"}[prepare]
    assert expected in result.output and result.output.count("error:") == 1


def test_status_reads_a_run_that_a_killed_process_left_with_its_wal(tmp_path):
    """After kill -9 the -wal and -shm files stay; status reads the data in them and leaves them be."""
    run_dir = tmp_path / "run"
    make_run(run_dir)
    holder = sqlite3.connect(run_dir / "cai.db")
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("UPDATE iterations SET status = 'running'")
    holder.commit()
    assert (run_dir / "cai.db-wal").is_file()
    before = folder_digest(run_dir)
    result = CliRunner().invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert '"status": "running"' in result.output
    assert folder_digest(run_dir) == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["cai.db", "cai.db-shm", "cai.db-wal", "policies"]
    holder.close()
    with pytest.raises(NoRun):
        open_run_store(tmp_path / "elsewhere", write=False)
    assert not (tmp_path / "elsewhere").exists()
