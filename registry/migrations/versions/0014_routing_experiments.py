"""routing_experiments; payment_attempts by time (windowed outcomes)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 11:00:00.000000

Issue 38: A/B experiments between instances, and success-rate routing's outcome window
(read by payment_attempts.created_at).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_experiments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("control", sa.String(length=64), nullable=False),
        sa.Column("min_sample", sa.Integer(), nullable=False),
        sa.Column("guardrail_points", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_reason", sa.Text(), nullable=True),
        sa.Column("winner", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_experiments")),
        sa.UniqueConstraint("scope", "name", name="uq_routing_experiments_scope_name"),
    )
    with op.batch_alter_table("payment_attempts") as batch:
        batch.create_index("ix_payment_attempts_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment_attempts") as batch:
        batch.drop_index("ix_payment_attempts_created_at")
    op.drop_table("routing_experiments")
