"""Alembic's environment: the connection comes from `loop.store.migrations.upgrade_to_head` (no alembic.ini)."""

from alembic import context

from loop.store.models import Base

connection = context.config.attributes["connection"]
# Batch mode: SQLite alters a table by copying it, which Alembic does for us with render_as_batch.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
