"""The service's shard claims (`loop.store.shards`), and the constitutions a run used, whole (the dashboard's diffs;
the workers load an iteration's from there). A table a database already has (made by a cai that created its
tables directly) is left as it is."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "constitution_versions" not in existing:
        op.create_table(
            "constitution_versions",
            sa.Column("hash", sa.String(), primary_key=True),
            sa.Column("name", sa.String(), nullable=False),
            sa.Column("content", sa.JSON(), nullable=False),
            sa.Column("recorded_at", sa.DateTime(), nullable=False),
        )
    if "shard_claims" in existing:
        return
    op.create_table(
        "shard_claims",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("iteration_id", sa.Integer(), sa.ForeignKey("iterations.id"), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("sent_at", sa.Double(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("iteration_id", "stage", "shard"),
    )
    op.create_index("ix_shard_claims_iteration_id", "shard_claims", ["iteration_id"])


def downgrade() -> None:
    op.drop_table("constitution_versions")
    op.drop_index("ix_shard_claims_iteration_id", "shard_claims")
    op.drop_table("shard_claims")
