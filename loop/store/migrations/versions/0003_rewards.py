"""The sampled pair source's answers and their reward components, and the replay buffer's record of which
earlier pairs an iteration trained on again. A table a database already has (made by a cai that created its
tables directly) is left as it is."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if {"sampled_answers", "reward_scores", "replays"} <= existing:
        return
    op.create_table(
        "sampled_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sample_id", sa.Integer(), sa.ForeignKey("samples.id"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("steering", sa.String(), nullable=False),
        sa.Column("principle_id", sa.String(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reward", sa.Double(), nullable=True),
        sa.UniqueConstraint("sample_id", "index"),
    )
    op.create_index("ix_sampled_answers_sample_id", "sampled_answers", ["sample_id"])
    op.create_table(
        "reward_scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("answer_id", sa.Integer(), sa.ForeignKey("sampled_answers.id"), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("weight", sa.Double(), nullable=False),
    )
    op.create_index("ix_reward_scores_answer_id", "reward_scores", ["answer_id"])
    op.create_table(
        "replays",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("iteration_id", sa.Integer(), sa.ForeignKey("iterations.id"), nullable=False),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pairs.id"), nullable=False),
        sa.UniqueConstraint("iteration_id", "pair_id"),
    )
    op.create_index("ix_replays_iteration_id", "replays", ["iteration_id"])


def downgrade() -> None:
    op.drop_table("replays")
    op.drop_table("reward_scores")
    op.drop_table("sampled_answers")
