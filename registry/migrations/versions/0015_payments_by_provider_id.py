"""payments by the provider's own id

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 13:30:00.000000

Issue 39: a provider whose webhooks name only its own id for a payment (M-Pesa's
callback carries its CheckoutRequestID, never the merchant's reference) has its
webhooks matched by (plugin_name, provider_transaction_id).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.create_index(
            "ix_payments_provider_id", ["provider_transaction_id", "plugin_name"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_index("ix_payments_provider_id")
