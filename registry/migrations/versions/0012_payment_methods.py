"""payment_methods, and payments charged with one (payment_method_id, pinned_instance_id)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 08:30:00.000000

Issue 35: saved payment methods, bound to the provider account (instance) that issued
them; a payment charged with one is routed to that instance only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=100), nullable=True),
        sa.Column("customer_ref", sa.String(length=200), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("plugin_name", sa.String(length=100), nullable=False),
        sa.Column("provider_customer_id", sa.String(length=200), nullable=True),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("brand", sa.String(length=50), nullable=True),
        sa.Column("last4", sa.String(length=4), nullable=True),
        sa.Column("exp_month", sa.Integer(), nullable=True),
        sa.Column("exp_year", sa.Integer(), nullable=True),
        sa.Column("wallet_email", sa.String(length=320), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_payment_id", sa.Uuid(), nullable=True),
        sa.Column("expiring_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_methods")),
        sa.UniqueConstraint("source_payment_id", name=op.f("uq_payment_methods_source_payment_id")),
    )
    with op.batch_alter_table("payment_methods") as batch:
        batch.create_index(batch.f("ix_payment_methods_tenant_id"), ["tenant_id"], unique=False)
        batch.create_index(
            batch.f("ix_payment_methods_customer_ref"), ["customer_ref"], unique=False
        )
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("payment_method_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("pinned_instance_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("save_method_for", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("save_method_for")
        batch.drop_column("pinned_instance_id")
        batch.drop_column("payment_method_id")
    op.drop_table("payment_methods")
