"""The ledger: payments, provider attempts, refunds and webhook receipts.

The database is the source of truth. Every status change goes through
:func:`apply_transition`, a compare-and-set (``UPDATE ... WHERE status IN``) that
follows :data:`workers.ledger.states.TRANSITIONS`; the caller writes the attempt row and
the outbox event in the same transaction.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from providers.base import utcnow
from registry.db import Base, UTCDateTime
from workers.ledger.outbox import AlertEvent, DisputeSummary, EventType, PaymentEvent
from workers.ledger.states import STATE_EVENT, PaymentState, can_transition

AutoId = BigInteger().with_variant(Integer, "sqlite")


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str | None] = mapped_column(String(100))
    order_id: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    # What the provider knows the payment by: derived from (tenant, idempotency key), or
    # the retry's own when a soft decline was charged again elsewhere (retry_reference).
    reference: Mapped[str] = mapped_column(String(100), unique=True)
    # The reference derived from (tenant, idempotency key), never changed: the payment's
    # idempotency (a request repeated after a retry changed ``reference`` finds it here).
    key_reference: Mapped[str | None] = mapped_column(String(100), unique=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    customer_email: Mapped[str] = mapped_column(String(320))
    payment_method: Mapped[str] = mapped_column(String(30), default="card")
    payment_token: Mapped[str | None] = mapped_column(Text)  # encrypted saved authorization
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default=PaymentState.REQUESTED.value)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    plugin_name: Mapped[str | None] = mapped_column(String(100))
    provider_transaction_id: Mapped[str | None] = mapped_column(String(200))
    authorization_url: Mapped[str | None] = mapped_column(Text)
    # what the customer must do while pending (providers.base.CustomerAction, as a dict)
    next_action: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    # A claim: who is processing it and until when (a crashed worker's lease expires).
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claims: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A payment waiting on its customer (pending) ends at this time: reconcile makes the
    # checkout unpayable where the provider allows it, verifies once more, then fails it.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Reconcile's verifications since the payment entered its pending or unknown state:
    # its place on the backoff schedule (workers.payments.reconcile).
    checks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Charged with a saved payment method: its id, and the instance that issued it, the
    # only one that may charge it (never another provider's account).
    payment_method_id: Mapped[str | None] = mapped_column(String(40))
    pinned_instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The customer agreed to save the method this checkout is paid with, for billing's
    # customer: saved on success (workers.payments.methods.save_from_success)
    save_method_for: Mapped[str | None] = mapped_column(String(200))
    # What billing said for routing rules beyond the payment's own fields
    # (billing_country, card_brand, card_bin), and the decision it was routed by
    # (registry.routing.RouteDecision.record; None: routed before rules existed for it).
    route_facts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    route_decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_payments_status_updated", "status", "updated_at"),
        Index("ix_payments_tenant_order", "tenant_id", "order_id"),
        # webhooks that name only the provider's id (workers.payments.webhooks)
        Index("ix_payments_provider_id", "provider_transaction_id", "plugin_name"),
    )


class PaymentAttempt(Base):
    """One provider call made for a payment, with its outcome and latency."""

    __tablename__ = "payment_attempts"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("payments.id"), index=True)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    plugin_name: Mapped[str] = mapped_column(String(100))
    operation: Mapped[str] = mapped_column(String(20))  # charge | verify | refund
    # succeeded | pending | failed | unavailable | unknown | not_found | config_error
    outcome: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(100))
    message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the provider reference this call was made under (a soft decline retried on another
    # instance is charged under a reference of its own); None: the payment's reference
    reference: Mapped[str | None] = mapped_column(String(100))

    # success-rate routing reads a window of recent attempts (workers.ledger.outcomes)
    __table_args__ = (Index("ix_payment_attempts_created_at", "created_at"),)


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    payment_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("payments.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # requested (reserved, provider not yet answered) | pending | succeeded | failed
    status: Mapped[str] = mapped_column(String(20))
    provider_refund_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when reconcile last alerted that no provider answer was recorded (None: never)
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentMethodRow(Base):
    """A customer's saved payment method (workers.payments.methods): the provider's
    reusable token, sealed, and the instance (provider account) that issued it."""

    __tablename__ = "payment_methods"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # pm_...
    tenant_id: Mapped[str | None] = mapped_column(String(100), index=True)
    customer_ref: Mapped[str] = mapped_column(String(200), index=True)  # billing's customer
    instance_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    plugin_name: Mapped[str] = mapped_column(String(100))
    provider_customer_id: Mapped[str | None] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(Text)  # sealed like every secret (SecretBox)
    brand: Mapped[str | None] = mapped_column(String(50))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    wallet_email: Mapped[str | None] = mapped_column(String(320))  # shown masked
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # the checkout it was saved from (None: imported): one method per checkout, however
    # many of the provider's events report it
    source_payment_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    # when payment_method.expiring went out (once per method)
    expiring_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Dispute(Base):
    """A customer's dispute of a payment (chargeback, inquiry, PayPal claim), as its
    provider's webhooks report it (workers.payments.disputes)."""

    __tablename__ = "disputes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    payment_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("payments.id"), index=True)
    provider_dispute_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))  # open | won | lost (DisputeStatus)
    provider_status: Mapped[str | None] = mapped_column(String(100))
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(200))
    due_by: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("payment_id", "provider_dispute_id", name="uq_disputes_provider_id"),
    )


class WebhookReceipt(Base):
    """A webhook already acted on: a redelivery with the same event id is a no-op."""

    __tablename__ = "webhook_receipts"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(300))
    event_type: Mapped[str] = mapped_column(String(100))
    reference: Mapped[str | None] = mapped_column(String(100))
    result: Mapped[str] = mapped_column(String(50))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("provider", "event_id", name="uq_webhook_receipts_event"),)


class InvalidTransition(RuntimeError):
    """A status change the transition table does not allow (a bug, not bad input)."""


def apply_transition(
    session: Session | Connection,
    payment_id: uuid.UUID,
    expected: PaymentState | tuple[PaymentState, ...],
    new: PaymentState,
    *,
    require_lease: uuid.UUID | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    **fields: Any,
) -> bool:
    """Compare-and-set the payment's status. True if this call made the change.

    ``expected`` is the status (or statuses) the caller saw; if another process
    moved the payment meanwhile, nothing is written and False is returned. With
    ``require_lease``, the change also requires that the caller still holds the claim;
    ``where`` adds further conditions (e.g. the ``refunded_minor`` the caller read).
    """
    olds = expected if isinstance(expected, tuple) else (expected,)
    for old in olds:
        if not can_transition(old, new):
            raise InvalidTransition(f"payment cannot go from {old} to {new}")
    statement = (
        update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_([s.value for s in olds]), *where)
        .values(status=new.value, updated_at=utcnow(), **fields)
    )
    if require_lease is not None:
        statement = statement.where(Payment.lease_token == require_lease)
    # No ORM session synchronisation: callers hold no Payment objects they expect updated.
    statement = statement.execution_options(synchronize_session=False)
    return session.execute(statement).rowcount == 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Claim:
    """A worker's right to call providers for a payment until ``expires_at``."""

    payment_id: uuid.UUID
    token: uuid.UUID
    expires_at: datetime
    recovering: bool  # an earlier claim expired: verify before charging again


@dataclass(frozen=True)
class PaymentRecord:
    """A payment row as plain data (what the worker's hot path reads; no ORM object)."""

    id: uuid.UUID
    tenant_id: str | None
    order_id: str
    idempotency_key: str
    reference: str
    amount_minor: int
    currency: str
    customer_email: str
    payment_method: str
    payment_token: str | None
    metadata_: dict[str, Any]
    status: str
    instance_id: uuid.UUID | None
    plugin_name: str | None
    provider_transaction_id: str | None
    authorization_url: str | None
    error_code: str | None
    error_message: str | None
    refunded_minor: int
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    claims: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    checks: int
    next_action: dict[str, Any] | None = None
    payment_method_id: str | None = None
    pinned_instance_id: uuid.UUID | None = None
    save_method_for: str | None = None
    route_facts: dict[str, Any] | None = None
    route_decision: dict[str, Any] | None = None
    key_reference: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> PaymentRecord:
        values = dict(row._mapping)
        values["metadata_"] = values.pop("metadata") or {}
        return cls(**values)


payments_table = cast(Table, Payment.__table__)
attempts_table = cast(Table, PaymentAttempt.__table__)
_payments = payments_table
RECORD_COLUMNS = tuple(_payments.c)


# The hot path's statements are built once: constructing SQLAlchemy statements costs
# more CPU than executing the cached, server-prepared ones.
_LEASE = {
    "lease_token": bindparam("token"),
    "lease_expires_at": bindparam("expires"),
    "claims": _payments.c.claims + 1,
    "updated_at": bindparam("now"),
}
_CLAIM_FRESH = (
    update(_payments)
    .where(_payments.c.id == bindparam("pid"), _payments.c.status == PaymentState.REQUESTED.value)
    .values(
        status=PaymentState.PROCESSING.value,
        instance_id=func.coalesce(bindparam("instance_id", type_=Uuid()), _payments.c.instance_id),
        plugin_name=func.coalesce(
            bindparam("plugin_name", type_=String()), _payments.c.plugin_name
        ),
        **_LEASE,
    )
    .returning(*RECORD_COLUMNS)
)
_CLAIM_STALE = (
    update(_payments)
    .where(
        _payments.c.id == bindparam("pid"),
        _payments.c.status == PaymentState.PROCESSING.value,
        _payments.c.lease_expires_at < bindparam("now"),
    )
    .values(**_LEASE)
    .returning(*RECORD_COLUMNS)
)


def new_token() -> uuid.UUID:
    """A random (version 4) UUID for lease tokens and event ids.

    Unique, not secret: os.urandom costs ~0.2 ms a call on some VMs, twice per payment.
    The random module's shared generator is reseeded in every forked child, so two
    worker processes never draw the same sequence.
    """
    return uuid.UUID(int=random.getrandbits(128), version=4)


def claim_payment(
    connection: Connection,
    payment_id: uuid.UUID,
    lease_s: float,
    *,
    instance_id: uuid.UUID | None = None,
    plugin_name: str | None = None,
    token: uuid.UUID | None = None,
) -> tuple[Claim, PaymentRecord] | None:
    """Take the payment for processing: requested -> processing, or an expired lease.

    One statement in the common case (``UPDATE ... RETURNING``). The first hop
    (``instance_id``, ``plugin_name``: the instance about to be called) is recorded with
    a fresh claim, so a worker taking over after a crash knows where to verify. Returns
    None when the payment is final, pending, or claimed by a live worker.
    """
    now = utcnow()
    token = token or new_token()
    expires = now + timedelta(seconds=lease_s)
    params = {"pid": payment_id, "token": token, "expires": expires, "now": now}
    hop = {"instance_id": instance_id, "plugin_name": plugin_name}
    fresh = connection.execute(_CLAIM_FRESH, params | hop).first()
    if fresh is not None:
        return Claim(payment_id, token, expires, recovering=False), PaymentRecord.from_row(fresh)
    stale = connection.execute(_CLAIM_STALE, params).first()
    if stale is not None:
        return Claim(payment_id, token, expires, recovering=True), PaymentRecord.from_row(stale)
    return None


_FINISH = (
    update(_payments)
    .where(
        _payments.c.id == bindparam("pid"),
        _payments.c.status == PaymentState.PROCESSING.value,
        _payments.c.lease_token == bindparam("token"),
    )
    .values(
        status=bindparam("new_status"),
        updated_at=bindparam("now"),
        lease_token=None,
        lease_expires_at=None,
        error_code=bindparam("error_code", type_=String()),
        error_message=bindparam("error_message", type_=Text()),
        instance_id=func.coalesce(bindparam("instance_id", type_=Uuid()), _payments.c.instance_id),
        plugin_name=func.coalesce(
            bindparam("plugin_name", type_=String()), _payments.c.plugin_name
        ),
        provider_transaction_id=func.coalesce(
            bindparam("provider_transaction_id", type_=String()),
            _payments.c.provider_transaction_id,
        ),
        authorization_url=func.coalesce(
            bindparam("authorization_url", type_=Text()), _payments.c.authorization_url
        ),
        next_action=bindparam("next_action", type_=JSON()),
        expires_at=bindparam("expires_at", type_=UTCDateTime()),
        checks=0,
        route_decision=func.coalesce(
            bindparam("route_decision", type_=JSON(none_as_null=True)),
            _payments.c.route_decision,
        ),
    )
)


def finish_claim(
    connection: Connection,
    claim: Claim,
    new: PaymentState,
    *,
    instance_id: uuid.UUID | None,
    plugin_name: str | None,
    error_code: str | None,
    error_message: str | None,
    provider_transaction_id: str | None,
    authorization_url: str | None,
    expires_at: datetime | None = None,
    next_action: dict[str, Any] | None = None,
    route_decision: dict[str, Any] | None = None,
) -> bool:
    """processing -> ``new`` for the holder of ``claim`` (compare-and-set on status and
    lease). Unset provider fields keep their stored values. True if this call moved it."""
    if not can_transition(PaymentState.PROCESSING, new):
        raise InvalidTransition(f"payment cannot go from processing to {new}")
    result = connection.execute(
        _FINISH,
        {
            "pid": claim.payment_id,
            "token": claim.token,
            "new_status": new.value,
            "now": utcnow(),
            "error_code": error_code,
            "error_message": error_message,
            "instance_id": instance_id,
            "plugin_name": plugin_name,
            "provider_transaction_id": provider_transaction_id,
            "authorization_url": authorization_url,
            "next_action": next_action,
            "expires_at": expires_at,
            "route_decision": route_decision,
        },
    )
    return result.rowcount == 1


def read_payment(connection: Connection, payment_id: uuid.UUID) -> PaymentRecord | None:
    row = connection.execute(select(*RECORD_COLUMNS).where(_payments.c.id == payment_id)).first()
    return None if row is None else PaymentRecord.from_row(row)


def payment_event(
    payment: Payment | PaymentRecord,
    state: PaymentState,
    *,
    previous_status: PaymentState | None = None,
    event_type: EventType | None = None,
    refund: Refund | None = None,
    dispute: Dispute | None = None,
    **changed: Any,
) -> PaymentEvent:
    """The result event for ``payment`` entering ``state`` (``changed``: fields just written;
    ``previous_status``: set when billing may have acted on the state it leaves)."""

    def value(name: str) -> Any:
        return changed[name] if name in changed else getattr(payment, name)

    return PaymentEvent(
        type=event_type or EventType(STATE_EVENT[state]),
        payment_id=payment.id,
        order_id=payment.order_id,
        tenant_id=payment.tenant_id,
        provider=value("plugin_name"),
        instance_id=value("instance_id"),
        status=state.value,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        provider_reference=value("reference"),
        authorization_url=value("authorization_url"),
        next_action=value("next_action") if state is PaymentState.PENDING else None,
        refunded_minor=value("refunded_minor"),
        error=value("error_message"),
        error_code=value("error_code"),
        previous_status=previous_status.value if previous_status else None,
        expires_at=value("expires_at") if state is PaymentState.PENDING else None,
        refund_id=refund.id if refund is not None else None,
        refund_amount_minor=refund.amount_minor if refund is not None else None,
        dispute=dispute_summary(dispute) if dispute is not None else None,
        route=value("route_decision"),
        attempts=changed.get("charge_attempts"),
    )


def dispute_summary(dispute: Dispute) -> DisputeSummary:
    return DisputeSummary(
        id=dispute.id,
        provider_dispute_id=dispute.provider_dispute_id,
        status=dispute.status,
        amount_minor=dispute.amount_minor,
        currency=dispute.currency,
        reason=dispute.reason,
        due_by=dispute.due_by,
    )


def late_success_alert(payment: Payment | PaymentRecord, provider: str) -> AlertEvent:
    """The alert for a payment the provider reports paid after Tender recorded it failed:
    money at the provider wins, and billing must fulfil the order or refund it."""
    return AlertEvent(
        severity="warning",
        title="payment succeeded after it was recorded failed",
        text=(
            f"{provider} reports payment {payment.id} (order {payment.order_id}, "
            f"{payment.reference}) paid after Tender recorded it failed "
            f"({payment.error_code}: {payment.error_message}). It is succeeded now; billing "
            "gets payment.succeeded with previous_status 'failed' and should fulfil the "
            "order or refund it."
        ),
        instance_id=payment.instance_id,
        tenant_id=payment.tenant_id,
    )
