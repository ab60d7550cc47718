"""payments: next_action, what the customer must do while a payment is pending

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:10:00.000000

Issue 34: a pending payment carries what billing must show the customer (a page, bank
transfer instructions, or the client secret of an SDK step), in the API and its events.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("next_action", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("next_action")
