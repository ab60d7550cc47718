"""disputes: a payment's chargebacks, inquiries and claims, from its provider's webhooks

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 07:40:00.000000

Issue 34: dispute webhooks (Stripe charge.dispute.*, Paystack charge.dispute.*, PayPal
CUSTOMER.DISPUTE.*) move a payment to ``disputed`` and, when lost, ``charged_back``; each
dispute is one row here, keyed by the provider's id within its payment.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "disputes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payment_id", sa.Uuid(), nullable=False),
        sa.Column("provider_dispute_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("provider_status", sa.String(length=100), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("due_by", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_disputes_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
        sa.UniqueConstraint("payment_id", "provider_dispute_id", name="uq_disputes_provider_id"),
    )
    with op.batch_alter_table("disputes") as batch:
        batch.create_index(batch.f("ix_disputes_payment_id"), ["payment_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("disputes") as batch:
        batch.drop_index(batch.f("ix_disputes_payment_id"))
    op.drop_table("disputes")
