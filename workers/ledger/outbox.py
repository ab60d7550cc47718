"""Result events: their schemas and the transactional outbox.

An event is written to ``outbox`` in the same transaction as the state change it
reports, then relayed to the topic exchange ``tender.events`` with the event type
as routing key (:mod:`workers.events.relay`). Delivery is at least once: consumers dedupe
on ``event_id``.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, BigInteger, Index, Integer, String, Table, Uuid
from sqlalchemy.orm import Mapped, Session, mapped_column

from providers.base import utcnow
from registry.db import Base, UTCDateTime

EXCHANGE = "tender.events"
DEFAULT_QUEUE = (
    "tender.events.all"  # durable, bound to '#': nothing is dropped before a consumer binds
)
SCHEMA_VERSION = 1


class EventType(StrEnum):
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_PENDING = "payment.pending"
    PAYMENT_UNKNOWN = "payment.unknown"
    PAYMENT_REFUNDED = "payment.refunded"
    REFUND_FAILED = "refund.failed"  # a refund the provider did not pay out
    PAYMENT_DISPUTED = "payment.disputed"  # the customer disputed it: money held
    PAYMENT_DISPUTE_CLOSED = "payment.dispute_closed"  # won (money stays) or lost
    # pending on the customer of a charge made without them (a saved card the bank wants
    # authenticated): bring them back with next_action
    PAYMENT_ACTION_REQUIRED = "payment.action_required"
    PAYMENT_METHOD_SAVED = "payment_method.saved"  # a checkout left a reusable method
    PAYMENT_METHOD_EXPIRING = "payment_method.expiring"  # its card expires soon: dunning
    PAYMENT_METHOD_EXPIRED = "payment_method.expired"  # past its expiry: no more charges
    PAYMENT_METHOD_REVOKED = "payment_method.revoked"  # the provider no longer has it
    PROVIDER_HEALTH_CHANGED = "provider.health_changed"
    ALERT_RAISED = "alert.raised"


def _new_event_id() -> uuid.UUID:
    # Unique, not secret; see workers.ledger.records.new_token (same generator, fork-safe).
    return uuid.UUID(int=random.getrandbits(128), version=4)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: uuid.UUID = Field(default_factory=_new_event_id)
    type: EventType
    occurred_at: datetime = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


class DisputeSummary(BaseModel):
    """The dispute a payment.disputed or payment.dispute_closed event is about."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID  # Tender's
    provider_dispute_id: str
    status: str  # open | won | lost
    amount_minor: int | None = None
    currency: str | None = None
    reason: str | None = None
    due_by: datetime | None = None  # when the merchant's evidence is due


class PaymentEvent(Event):
    payment_id: uuid.UUID
    order_id: str
    tenant_id: str | None
    provider: str | None  # plugin name
    instance_id: uuid.UUID | None
    status: str
    amount_minor: int
    currency: str
    provider_reference: str
    authorization_url: str | None = None
    # payment.pending: what the customer must do (a page, bank details, an SDK secret)
    next_action: dict[str, Any] | None = None
    refunded_minor: int = 0
    error: str | None = None
    error_code: str | None = None
    # Set when the payment left a state billing may already have acted on: "failed" on a
    # payment.succeeded means the provider reported the money after Tender had failed it.
    previous_status: str | None = None
    expires_at: datetime | None = None  # payment.pending: when the checkout ends
    # refund.failed: which refund, for how much (the payment's fields are as they are now)
    refund_id: uuid.UUID | None = None
    refund_amount_minor: int | None = None
    dispute: DisputeSummary | None = None  # payment.disputed, payment.dispute_closed
    # the routing decision the payment was made by: rule, ruleset version, reason
    route: dict[str, Any] | None = None
    # charges made under more than one reference (a soft decline retried on the next
    # instance): each with its instance, reference, outcome and code, in order
    attempts: list[dict[str, Any]] | None = None


class PaymentMethodEvent(Event):
    """A saved payment method (never its token)."""

    type: EventType = EventType.PAYMENT_METHOD_SAVED
    payment_method_id: str
    payment_id: uuid.UUID | None = None  # the checkout it was saved from
    tenant_id: str | None
    customer_ref: str
    provider: str
    instance_id: uuid.UUID
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


class HealthChangedEvent(Event):
    type: EventType = EventType.PROVIDER_HEALTH_CHANGED
    instance_id: uuid.UUID
    plugin_name: str
    tenant_id: str | None
    previous: str
    current: str
    message: str = ""


class AlertEvent(Event):
    type: EventType = EventType.ALERT_RAISED
    severity: Literal["info", "warning", "critical"]
    title: str
    text: str
    instance_id: uuid.UUID | None = None
    tenant_id: str | None = None


class OutboxEvent(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    event_type: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "id"),)


outbox_table = cast(Table, OutboxEvent.__table__)


def outbox_row(event: Event) -> dict[str, Any]:
    """Column values of ``event``'s outbox row (for Core inserts on the hot path)."""
    return {
        "event_id": event.event_id,
        "event_type": event.type.value,
        "payload": event.model_dump(mode="json"),
        "created_at": event.occurred_at,
    }


def add_event(session: Session, event: Event) -> OutboxEvent:
    """Write ``event`` to the outbox in the caller's transaction."""
    row = OutboxEvent(
        event_id=event.event_id,
        event_type=event.type.value,
        payload=event.model_dump(mode="json"),
        created_at=event.occurred_at,
    )
    session.add(row)
    return row
