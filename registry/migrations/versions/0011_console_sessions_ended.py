"""console_sessions_ended: console sessions signed out on the server

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 08:05:00.000000

Issue 36: signing out only deleted the browser's cookie, and a copied cookie stayed valid
for the session's lifetime; a signed-out session's id is now kept until it would have
expired, and its cookie is refused.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions_ended",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions_ended")),
    )


def downgrade() -> None:
    op.drop_table("console_sessions_ended")
