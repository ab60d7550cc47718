"""payments: expires_at and checks, for checkouts that expire and reconcile's backoff

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:40:00.000000

Issue 33: a payment waiting on its customer carries an expiry, and reconcile verifies
pending and unknown payments on a backoff schedule (its place kept in ``checks``)
instead of every few minutes forever.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("checks", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("checks")
        batch.drop_column("expires_at")
