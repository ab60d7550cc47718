"""routing_rulesets; payments.route_facts, route_decision, key_reference; attempts.reference

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:30:00.000000

Issue 37: routing rules as versioned data, the decision each payment was routed by, and
a provider reference per attempt (a soft decline retried elsewhere gets a new one).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_rulesets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_by", sa.String(length=100), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_rulesets")),
        sa.UniqueConstraint("scope", "version", name="uq_routing_rulesets_scope_version"),
    )
    with op.batch_alter_table("routing_rulesets") as batch:
        batch.create_index("ix_routing_rulesets_status", ["status"], unique=False)
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("route_facts", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("route_decision", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("key_reference", sa.String(length=100), nullable=True))
    # every payment so far was charged under the reference its key derives
    op.execute("UPDATE payments SET key_reference = reference")
    with op.batch_alter_table("payments") as batch:
        batch.create_unique_constraint(batch.f("uq_payments_key_reference"), ["key_reference"])
    with op.batch_alter_table("payment_attempts") as batch:
        batch.add_column(sa.Column("reference", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_attempts") as batch:
        batch.drop_column("reference")
    with op.batch_alter_table("payments") as batch:
        batch.drop_constraint("uq_payments_key_reference", type_="unique")
        batch.drop_column("key_reference")
        batch.drop_column("route_decision")
        batch.drop_column("route_facts")
    with op.batch_alter_table("routing_rulesets") as batch:
        batch.drop_index("ix_routing_rulesets_status")
    op.drop_table("routing_rulesets")
