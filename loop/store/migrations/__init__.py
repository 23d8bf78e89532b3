"""The store's schema migrations (Alembic): every database, new or from an older cai, is brought to head on open.

A database without Alembic's version table is either new or from before migrations (schema version 1, or the
unversioned tables before it): the baseline revision's tables are created where missing, it is stamped as the
baseline, and the later revisions run as on any other database. To change the schema, add a revision under
versions/ (`down_revision` = the current head) that alters the tables explicitly; never edit a released one.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from loop.store.models import Base

BASELINE = "0001"
BASELINE_TABLES = ("runs", "iterations", "stage_runs", "samples", "critiques", "contrasts", "comparisons", "pairs",
                   "reviews", "policies", "metrics", "eval_responses", "eval_comparisons", "evaluations",
                   "eval_metrics", "gate_decisions", "policy_moves", "iteration_inputs", "run_leases",
                   "control_requests", "cai_meta")
"""The tables of the schema before migrations (what the baseline revision stands for)."""


def _config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config(None)).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> None:
    """Bring the database to the newest schema, keeping its data; a no-op when it is there already."""
    with engine.begin() as connection:
        config = _config(connection)
        if MigrationContext.configure(connection).get_current_revision() is None:
            tables = [Base.metadata.tables[name] for name in BASELINE_TABLES]
            Base.metadata.create_all(connection, tables=tables)
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
