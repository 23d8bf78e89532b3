"""A judge comparison records whether the consistency check found its verdict suspect (the winner stops winning
without one part of it): the pairs stage keeps such verdicts out of training."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("comparisons")}
    if "suspect" in columns:
        return
    # A plain ADD COLUMN (with a default, so SQLite allows NOT NULL): a batch rebuild of the table would have to
    # drop it, which the pairs' foreign keys refuse.
    op.add_column("comparisons", sa.Column("suspect", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("comparisons", "suspect")
