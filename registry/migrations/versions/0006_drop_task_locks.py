"""task_locks: dropped; sweeps lock with PostgreSQL advisory locks or a file lock

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 03:00:00.000000

A lease row outlived a holder that died or lost the database mid-sweep (issue 32); the
locks in workers.core.locks end with their holder's session or process instead.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("task_locks")


def downgrade() -> None:
    op.create_table(
        "task_locks",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_task_locks")),
    )
