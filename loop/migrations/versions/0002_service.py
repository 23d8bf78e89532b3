"""The service: shard claims (`loop.shards`) and the constitutions iterations ran with (for workers)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
    op.create_table(
        "constitution_snapshots",
        sa.Column("content_hash", sa.String(), primary_key=True),
        sa.Column("body", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("constitution_snapshots")
    op.drop_index("ix_shard_claims_iteration_id", "shard_claims")
    op.drop_table("shard_claims")
