"""A shard claim carries a training gang's rendezvous (`train.nodes`): node rank 0 publishes where the nodes meet
on its claim, and each other node marks the one it joined on its own."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("shard_claims")}
    if "gang" not in columns:
        op.add_column("shard_claims", sa.Column("gang", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("shard_claims", "gang")
