"""Baseline: the schema before migrations (cai_meta schema version 1, with the operator's control requests).

Its tables are created by `loop.store.migrations.upgrade_to_head` from the models (only where missing); a database of
this shape is stamped with this revision.
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
