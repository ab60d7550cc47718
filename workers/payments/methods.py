"""Saved payment methods: a customer's reusable provider token, bound to the account that
issued it (issue 35).

A method is the provider's token (Paystack ``authorization_code``, Stripe ``pm_...`` with
its ``cus_...``, Flutterwave's card token, a PayPal vault id), sealed like every secret,
plus what billing may show (brand, last 4, expiry; a wallet email masked) and the
**instance that issued it**: a card saved at one provider account is charged there and
nowhere else. ``request_payment(..., payment_method_id="pm_...")`` charges it: the payment
is pinned to that instance (the route holds it alone, and no fallback sends the token to
another provider); if the instance cannot take payments, the payment fails with
``payment_method_unavailable`` and is not charged elsewhere.

Methods are imported (REST, CLI, code) for tokens saved outside Tender; listing and
revoking stay within the caller's tenant like every object.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from providers.base import SavedMethod, utcnow
from registry import audit
from registry.db import Database, get_database
from registry.secrets import SecretBox
from registry.service import PluginRegistry
from workers.ledger.outbox import EventType, OutboxEvent, PaymentMethodEvent, add_event
from workers.ledger.records import Payment, PaymentMethodRow
from workers.payments.client import InvalidPaymentRequest, PaymentNotFound, in_tenant

METHOD_PREFIX = "pm_"
_CUSTOMER_REF = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


class PaymentMethodNotFound(PaymentNotFound):
    """No such payment method (or not one this caller's tenant may see): a 404."""


class IssuerNotFound(PaymentNotFound):
    """No such instance to import a method for (or not one this caller's tenant sees)."""


class PaymentMethodView(BaseModel):
    """A saved method as billing sees it: never the token."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant_id: str | None
    customer_ref: str
    instance_id: uuid.UUID
    provider: str
    provider_customer_id: str | None
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    wallet_email: str | None  # masked: a***@example.com
    status: str
    created_at: datetime
    last_used_at: datetime | None


def mask_email(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def view_of_method(row: PaymentMethodRow) -> PaymentMethodView:
    return PaymentMethodView(
        id=row.id,
        tenant_id=row.tenant_id,
        customer_ref=row.customer_ref,
        instance_id=row.instance_id,
        provider=row.plugin_name,
        provider_customer_id=row.provider_customer_id,
        brand=row.brand,
        last4=row.last4,
        exp_month=row.exp_month,
        exp_year=row.exp_year,
        wallet_email=mask_email(row.wallet_email),
        status=row.status,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


def import_payment_method(
    instance_id: uuid.UUID | str,
    token: str,
    customer_ref: str,
    *,
    provider_customer_id: str | None = None,
    brand: str | None = None,
    last4: str | None = None,
    exp_month: int | None = None,
    exp_year: int | None = None,
    wallet_email: str | None = None,
    registry: PluginRegistry | None = None,
    database: Database | None = None,
    actor: str = "code",
    within_tenant: str | None = None,
) -> PaymentMethodView:
    """Save a method issued by the instance ``instance_id`` (a token saved outside
    Tender). The method's tenant is its instance's; a caller bound to another tenant does
    not find the instance. Bad input raises :class:`InvalidPaymentRequest` naming the
    field, before anything is written."""
    from workers import runtime

    registry = registry or runtime.registry()
    database = database or get_database()
    try:
        key = uuid.UUID(str(instance_id))
    except ValueError:
        raise InvalidPaymentRequest("instance_id", "is not an instance id") from None
    instance = None
    for fresh in (False, True):  # one made a moment ago may not be in the cached snapshot
        if fresh:
            registry.refresh(force=True)
        instance = next((v for v in registry.snapshot() if v.id == key), None)
        if instance is not None:
            break
    if instance is None or not in_tenant(instance.tenant_id, within_tenant):
        raise IssuerNotFound(f"instance_id: no instance {key}")
    if instance.tenant_id is None and within_tenant is not None:
        raise InvalidPaymentRequest(
            "instance_id", "a platform instance's methods are not a tenant's"
        )
    if not isinstance(token, str) or not token.strip() or len(token) > 500:
        raise InvalidPaymentRequest("token", "must be the provider's token, at most 500 characters")
    if not isinstance(customer_ref, str) or not _CUSTOMER_REF.fullmatch(customer_ref):
        raise InvalidPaymentRequest(
            "customer_ref", "billing's customer reference, 1 to 200 characters"
        )
    if last4 is not None and not re.fullmatch(r"[0-9]{4}", last4):
        raise InvalidPaymentRequest("last4", "four digits")
    if exp_month is not None and not 1 <= exp_month <= 12:
        raise InvalidPaymentRequest("exp_month", "1 to 12")
    if exp_year is not None and not 2000 <= exp_year <= 2100:
        raise InvalidPaymentRequest("exp_year", "a four-digit year")
    box: SecretBox = registry.box
    row = PaymentMethodRow(
        id=METHOD_PREFIX + secrets.token_urlsafe(18),
        tenant_id=instance.tenant_id,
        customer_ref=customer_ref,
        instance_id=instance.id,
        plugin_name=instance.plugin_name,
        provider_customer_id=provider_customer_id,
        token=box.encrypt(token.strip())["$enc"],
        brand=brand[:50] if brand else None,
        last4=last4,
        exp_month=exp_month,
        exp_year=exp_year,
        wallet_email=wallet_email[:320] if wallet_email else None,
        status="active",
    )
    with database.transaction() as session:
        session.add(row)
        session.flush()
        audit.record(
            session,
            actor,
            "payment_method.import",
            row.id,
            None,
            {"customer_ref": customer_ref, "instance_id": str(instance.id), "last4": last4},
            tenant_id=instance.tenant_id,
        )
        return view_of_method(row)


def save_from_success(
    session: Session, payment: Payment, saved: SavedMethod | None, box: SecretBox
) -> list[OutboxEvent]:
    """In the transaction that records ``payment`` succeeded: when its customer agreed to
    save the method (``save_method_for``) and the provider reported a reusable one, save
    it, bound to the instance that took the payment, and add ``payment_method.saved``.
    Nothing when either is missing (a provider that reports none: billing is told by the
    absence of the event)."""
    if saved is None or payment.save_method_for is None or payment.instance_id is None:
        return []
    already = session.execute(
        select(PaymentMethodRow.id).where(PaymentMethodRow.source_payment_id == payment.id)
    ).first()
    if already is not None:  # another of the provider's events for this checkout saved it
        return []
    row = PaymentMethodRow(
        id=METHOD_PREFIX + secrets.token_urlsafe(18),
        tenant_id=payment.tenant_id,
        customer_ref=payment.save_method_for,
        instance_id=payment.instance_id,
        plugin_name=payment.plugin_name or "unknown",
        provider_customer_id=saved.provider_customer_id,
        token=box.encrypt(saved.token.get_secret_value())["$enc"],
        brand=saved.brand,
        last4=saved.last4,
        exp_month=saved.exp_month,
        exp_year=saved.exp_year,
        wallet_email=saved.wallet_email,
        status="active",
        source_payment_id=payment.id,
    )
    session.add(row)
    session.flush()
    event = PaymentMethodEvent(
        payment_method_id=row.id,
        payment_id=payment.id,
        tenant_id=row.tenant_id,
        customer_ref=row.customer_ref,
        provider=row.plugin_name,
        instance_id=row.instance_id,
        brand=row.brand,
        last4=row.last4,
        exp_month=row.exp_month,
        exp_year=row.exp_year,
    )
    return [add_event(session, event)]


def _month_end(year: int, month: int) -> datetime:
    """The first instant after the card's expiry month (cards expire at its end)."""
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def expiry_sweep(database: Database, notice_days: int, now: datetime | None = None) -> list[int]:
    """Run by reconcile: methods whose card expires within ``notice_days`` get one
    ``payment_method.expiring`` (billing's dunning starts there); methods past their
    expiry become ``expired`` with ``payment_method.expired`` and are not charged again.
    Returns the outbox ids to publish."""
    now = now or utcnow()
    events: list[OutboxEvent] = []
    with database.transaction() as session:
        rows = session.execute(
            select(PaymentMethodRow).where(
                PaymentMethodRow.status == "active",
                PaymentMethodRow.exp_year.is_not(None),
                PaymentMethodRow.exp_month.is_not(None),
            )
        ).scalars()
        for row in rows:
            assert row.exp_year is not None and row.exp_month is not None  # selected so
            ends = _month_end(row.exp_year, row.exp_month)
            kind = None
            if ends <= now:
                row.status = "expired"
                kind = EventType.PAYMENT_METHOD_EXPIRED
            elif row.expiring_notified_at is None and ends - now <= timedelta(days=notice_days):
                row.expiring_notified_at = now
                kind = EventType.PAYMENT_METHOD_EXPIRING
            if kind is not None:
                event = PaymentMethodEvent(
                    type=kind, payment_method_id=row.id, tenant_id=row.tenant_id,
                    customer_ref=row.customer_ref, provider=row.plugin_name,
                    instance_id=row.instance_id, brand=row.brand, last4=row.last4,
                    exp_month=row.exp_month, exp_year=row.exp_year,
                )  # fmt: skip
                events.append(add_event(session, event))
        session.flush()
        return [event.id for event in events]


def method_gone(database: Database, method_id: str, status: str) -> list[int]:
    """The provider says a saved method is gone (``status``: expired or revoked, from its
    plugin's ``method_gone_codes``): it stops being charged, and billing is told."""
    kind = (
        EventType.PAYMENT_METHOD_EXPIRED
        if status == "expired"
        else EventType.PAYMENT_METHOD_REVOKED
    )
    with database.transaction() as session:
        row = session.get(PaymentMethodRow, method_id, with_for_update=True)
        if row is None or row.status != "active":
            return []
        row.status = "expired" if status == "expired" else "revoked"
        event = add_event(
            session,
            PaymentMethodEvent(
                type=kind, payment_method_id=row.id, tenant_id=row.tenant_id,
                customer_ref=row.customer_ref, provider=row.plugin_name,
                instance_id=row.instance_id, brand=row.brand, last4=row.last4,
                exp_month=row.exp_month, exp_year=row.exp_year,
            ),
        )  # fmt: skip
        session.flush()
        return [event.id]


def list_payment_methods(
    *,
    customer_ref: str | None = None,
    database: Database | None = None,
    within_tenant: str | None = None,
) -> list[PaymentMethodView]:
    """Saved methods (of one customer), newest first; a bound caller's tenant's only."""
    database = database or get_database()
    query = select(PaymentMethodRow).order_by(PaymentMethodRow.created_at.desc()).limit(500)
    if customer_ref is not None:
        query = query.where(PaymentMethodRow.customer_ref == customer_ref)
    if within_tenant is not None:
        query = query.where(PaymentMethodRow.tenant_id == within_tenant)
    with database.sessions() as session:
        return [view_of_method(row) for row in session.execute(query).scalars()]


def revoke_payment_method(
    method_id: str,
    *,
    database: Database | None = None,
    actor: str = "code",
    within_tenant: str | None = None,
) -> PaymentMethodView:
    """Revoke a method: it can no longer be charged. Tender stops using it; the provider
    keeps its own copy (detach it there if the customer asked to be forgotten)."""
    database = database or get_database()
    with database.transaction() as session:
        row = session.get(PaymentMethodRow, method_id, with_for_update=True)
        if row is None or not in_tenant(row.tenant_id, within_tenant):
            raise PaymentMethodNotFound(f"no payment method {method_id[:60]}")
        before = {"status": row.status}
        row.status = "revoked"
        audit.record(
            session, actor, "payment_method.revoke", row.id, before, {"status": row.status},
            tenant_id=row.tenant_id,
        )  # fmt: skip
        return view_of_method(row)
