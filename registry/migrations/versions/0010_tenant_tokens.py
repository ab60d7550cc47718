"""api_tokens.tenant_id and audit_log.tenant_id: tokens bound to one tenant

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 08:00:00.000000

Issue 36: a token may be bound to one tenant (None: platform-wide, what every existing
token stays), and each audit record names the tenant whose object changed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(length=100), nullable=True))
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(length=100), nullable=True))
        batch.create_index(batch.f("ix_audit_log_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_index(batch.f("ix_audit_log_tenant_id"))
        batch.drop_column("tenant_id")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("tenant_id")
