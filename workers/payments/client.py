"""The billing side: ask for a payment, read it back.

``request_payment`` validates everything before it writes anything, records the
payment, then enqueues ``process_payment``. The idempotency key (default: the
order id) makes a repeated request return the first payment instead of charging
again; the same key with different details is refused.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, EmailStr, TypeAdapter, ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from config.celery import PROCESS_PAYMENT
from providers.base import PaymentMethod, derive_reference, utcnow
from providers.money import from_minor, normalize_currency, to_minor
from registry.db import Database, get_database
from registry.rules import RulesError, validated_route_facts
from registry.secrets import SecretBox
from registry.text import field_with_nul
from workers.events.broker import OutageLog, reuse_one_client
from workers.ledger.records import (
    RECORD_COLUMNS,
    Payment,
    PaymentAttempt,
    PaymentMethodRow,
    PaymentRecord,
    payments_table,
)
from workers.ledger.states import PaymentState

log = logging.getLogger(__name__)
_broker = OutageLog(log, "broker")

_email = TypeAdapter(EmailStr)
_METADATA_LIMIT = 50  # keys
_METHODS = frozenset(get_args(PaymentMethod))


class InvalidPaymentRequest(ValueError):
    """A request Tender refuses before writing anything. ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class IdempotencyConflict(InvalidPaymentRequest):
    """The idempotency key was used before for a different payment."""


class PaymentNotFound(LookupError):
    """No payment with that id."""


class PaymentReceipt(BaseModel):
    model_config = ConfigDict(frozen=True)

    payment_id: uuid.UUID
    status: PaymentState
    reference: str
    idempotency_key: str
    created: bool  # False: an earlier request with the same key was returned
    enqueued: bool  # False: the broker refused; reconcile will enqueue it


class AttemptView(BaseModel):
    plugin_name: str
    instance_id: uuid.UUID | None
    operation: str
    outcome: str
    error_code: str | None
    message: str | None
    latency_ms: float
    created_at: datetime
    # the provider reference the call was made under (a soft decline's retry has its own)
    reference: str | None = None


class PaymentView(BaseModel):
    """A payment as billing sees it. No secrets (the saved token is never shown)."""

    id: uuid.UUID
    tenant_id: str | None
    order_id: str
    idempotency_key: str
    amount: Decimal
    amount_minor: int
    currency: str
    customer_email: str
    payment_method: str
    metadata: dict[str, Any]
    status: PaymentState
    provider: str | None
    instance_id: uuid.UUID | None
    provider_reference: str
    provider_transaction_id: str | None
    authorization_url: str | None
    # while pending: what the customer must do (type: redirect, bank_transfer, sdk or the
    # provider's own; url, bank_transfer details, client_secret for an SDK step)
    next_action: dict[str, Any] | None = None
    payment_method_id: str | None = None  # the saved method it was charged with
    error_code: str | None
    error: str | None
    refunded_minor: int
    created_at: datetime
    updated_at: datetime
    # A payment waiting on its customer ends then: failed with error_code "expired"
    # unless the provider has the money (which always wins, even later).
    expires_at: datetime | None = None
    # the routing decision it was made by: rule, ruleset version and id, reason
    route: dict[str, Any] | None = None
    attempts: list[AttemptView] = []


def _validated(
    order_id: str,
    amount: Decimal | int | str,
    currency: str,
    customer_email: str,
    payment_method: str,
    metadata: dict[str, Any] | None,
    tenant_id: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    if not isinstance(order_id, str) or not order_id.strip() or len(order_id) > 200:
        raise InvalidPaymentRequest(
            "order_id", "must be a non-empty string of at most 200 characters"
        )
    currency = normalize_currency(currency)
    amount_minor = to_minor(amount, currency)
    try:
        email = _email.validate_python(customer_email)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise InvalidPaymentRequest(
            "customer_email", f"{customer_email!r} is not a valid email: {reason}"
        ) from None
    if payment_method not in _METHODS:
        raise InvalidPaymentRequest(
            "payment_method", f"must be one of {', '.join(sorted(_METHODS))}"
        )
    metadata = dict(metadata or {})
    if len(metadata) > _METADATA_LIMIT:
        raise InvalidPaymentRequest("metadata", f"at most {_METADATA_LIMIT} keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, str | int | bool)):
            raise InvalidPaymentRequest(
                "metadata", f"{key!r}: values must be strings, integers, booleans or null"
            )
        if isinstance(value, float):
            raise InvalidPaymentRequest("metadata", f"{key!r}: floats are not allowed")
    if tenant_id is not None and (
        not isinstance(tenant_id, str) or not tenant_id.strip() or len(tenant_id) > 100
    ):
        raise InvalidPaymentRequest(
            "tenant_id", "must be a non-empty string of at most 100 characters, or None"
        )
    key = idempotency_key if idempotency_key is not None else f"order:{order_id}"
    if not isinstance(key, str) or not key.strip() or len(key) > 200:
        raise InvalidPaymentRequest(
            "idempotency_key", "must be a non-empty string of at most 200 characters"
        )
    texts = {"order_id": order_id, "tenant_id": tenant_id, "idempotency_key": key}
    nul = field_with_nul(texts, "") or field_with_nul(metadata, "metadata")
    if nul:
        raise InvalidPaymentRequest(nul.lstrip("."), "must not contain NUL characters")
    return {
        "order_id": order_id,
        "amount_minor": amount_minor,
        "currency": currency,
        "customer_email": email,
        "payment_method": payment_method,
        "metadata_": metadata,
        "tenant_id": tenant_id,
        "idempotency_key": key,
    }


_payments = payments_table
_COMPARED = ("order_id", "amount_minor", "currency", "customer_email", "payment_method")
# Built once: constructing the statement per request cost more CPU than executing it.
# No RETURNING: every column's value is set here (none has a server default), so the
# record is built from what was sent; reading 26 columns back cost a fifth of a request.
_INSERT = insert(_payments)


def method_for_charge(database: Database, method_id: str, tenant_id: str | None) -> Any:
    """The active saved method ``method_id`` of ``tenant_id``, for a new payment;
    refusals name the field (InvalidPaymentRequest). See workers.payments.methods."""
    if not isinstance(method_id, str) or not method_id.startswith("pm_") or len(method_id) > 40:
        raise InvalidPaymentRequest("payment_method_id", "is not a payment method id (pm_...)")
    with database.sessions() as session:
        row = session.get(PaymentMethodRow, method_id)
        if row is None or row.tenant_id != tenant_id:
            raise InvalidPaymentRequest("payment_method_id", f"no payment method {method_id}")
        if row.status != "active":
            raise InvalidPaymentRequest(
                "payment_method_id", f"is {row.status}; it cannot be charged"
            )
        session.expunge(row)
        return row


def record_payment(
    database: Database,
    fields: dict[str, Any],
    *,
    payment_token: str | None = None,
    box: SecretBox | None = None,
    sealed_token: str | None = None,
) -> tuple[PaymentRecord, bool]:
    """Insert the payment, or return the one already recorded under its idempotency key
    (``sealed_token``: a saved method's token, already sealed)."""
    reference = derive_reference(fields["idempotency_key"], fields["tenant_id"])
    if payment_token:
        if box is None:
            raise InvalidPaymentRequest("payment_token", "cannot be stored without a secrets key")
        sealed_token = box.encrypt(payment_token)["$enc"]
    now = utcnow()
    values = {
        **{k: v for k, v in fields.items() if k != "metadata_"},
        "metadata": fields["metadata_"],
        "id": uuid.uuid4(),
        "reference": reference,
        "key_reference": reference,
        "payment_token": sealed_token,
        "status": PaymentState.REQUESTED.value,
        "refunded_minor": 0,
        "claims": 0,
        "checks": 0,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with database.statement() as connection:
            connection.execute(_INSERT, values)
    except IntegrityError:
        pass
    else:
        inserted: dict[str, Any] = {c.name: values.get(c.name) for c in RECORD_COLUMNS}
        inserted["metadata_"] = inserted.pop("metadata") or {}
        return PaymentRecord(**inserted), True
    with database.statement() as connection:
        existing = connection.execute(
            select(*_payments.c).where(_payments.c.key_reference == reference)
        ).first()
    if existing is None:  # pragma: no cover - the unique violation had another cause
        raise InvalidPaymentRequest("idempotency_key", "could not be recorded; try again")
    existing_record = PaymentRecord.from_row(existing)
    for name in _COMPARED:
        if getattr(existing_record, name) != fields[name]:
            raise IdempotencyConflict(
                "idempotency_key",
                f"{fields['idempotency_key']!r} was already used for a payment with a different {name}",
            )
    return existing_record, False


def request_payment(
    order_id: str,
    amount: Decimal | int | str,
    currency: str,
    customer_email: str,
    payment_method: str = "card",
    metadata: dict[str, Any] | None = None,
    tenant_id: str | None = None,
    idempotency_key: str | None = None,
    *,
    payment_token: str | None = None,
    payment_method_id: str | None = None,
    save_for_customer: str | None = None,
    billing_country: str | None = None,
    card_brand: str | None = None,
    card_bin: str | None = None,
    database: Database | None = None,
) -> PaymentReceipt:
    """Record a payment and enqueue it. Bad input raises before anything is written.

    ``amount`` is in major units (``Decimal("12.50")``); floats are refused.
    ``payment_token``: a saved authorization from the provider (secret; stored encrypted).
    ``payment_method_id``: a saved method of this tenant (``pm_...``): charged only by
    the instance that issued it (workers.payments.methods).
    ``save_for_customer``: the customer agreed to save the method they pay with, for
    billing's customer reference: on success it becomes a saved method
    (``payment_method.saved``), where the provider reports a reusable one.
    ``billing_country``, ``card_brand``, ``card_bin``: facts routing rules may read
    (registry.rules); a BIN is at most 8 digits, never the card number.
    """
    if payment_token and payment_method_id:
        raise InvalidPaymentRequest(
            "payment_method_id", "give a payment_method_id or a payment_token, not both"
        )
    fields = _validated(
        order_id,
        amount,
        currency,
        customer_email,
        payment_method,
        metadata,
        tenant_id,
        idempotency_key,
    )
    try:
        facts = validated_route_facts(
            {"billing_country": billing_country, "card_brand": card_brand, "card_bin": card_bin}
        )
    except RulesError as exc:
        raise InvalidPaymentRequest(exc.field, exc.message) from None
    if facts:
        fields["route_facts"] = facts
    from workers import runtime  # the registry's secret box; imported late to keep import cheap

    database = database or get_database()
    sealed = None
    if save_for_customer is not None:
        if not isinstance(save_for_customer, str) or not 0 < len(save_for_customer) <= 200:
            raise InvalidPaymentRequest(
                "save_for_customer", "billing's customer reference, 1 to 200 characters"
            )
        if payment_method_id is not None or payment_token:
            raise InvalidPaymentRequest(
                "save_for_customer", "a method charged from a token is already saved"
            )
        fields["save_method_for"] = save_for_customer
    if payment_method_id is not None:
        method = method_for_charge(database, payment_method_id, fields["tenant_id"])
        fields |= {"payment_method_id": method.id, "pinned_instance_id": method.instance_id}
        sealed = method.token
        with database.statement() as connection:  # shown to billing as "last used"
            connection.execute(
                update(PaymentMethodRow)
                .where(PaymentMethodRow.id == method.id)
                .values(last_used_at=utcnow())
            )
    payment, created = record_payment(
        database,
        fields,
        payment_token=payment_token,
        box=runtime.registry().box if payment_token else None,
        sealed_token=sealed,
    )
    enqueued = True
    if payment.status == PaymentState.REQUESTED:
        enqueued = enqueue_payment(
            payment.id,
            payment.tenant_id,
            payment.currency,
            payment.idempotency_key,
            pinned_instance_id=payment.pinned_instance_id,
        )
    return PaymentReceipt(
        payment_id=payment.id,
        status=PaymentState(payment.status),
        reference=payment.reference,
        idempotency_key=payment.idempotency_key,
        created=created,
        enqueued=enqueued,
    )


def enqueue_payment(
    payment_id: uuid.UUID,
    tenant_id: str | None = None,
    currency: str | None = None,
    idempotency_key: str | None = None,
    *,
    pinned_instance_id: uuid.UUID | None = None,
) -> bool:
    """Send ``process_payment``; False if the broker refused (reconcile will re-send).

    The routing facts, when given, ride along so the worker claims in one statement.
    """
    from workers.core.app import app  # late: importing the client must not build Celery's app

    given = {"tenant_id": tenant_id, "currency": currency, "idempotency_key": idempotency_key}
    if pinned_instance_id is not None:
        given["pinned_instance_id"] = str(pinned_instance_id)
    args = [str(payment_id)]
    kwargs = {k: v for k, v in given.items() if v is not None}
    try:
        with app.producer_or_acquire() as producer:
            reuse_one_client(producer.channel)
            # By name (the task lives above the payments package, in workers.tasks), as
            # Task.apply_async would: routing comes from task_routes, results are ignored.
            app.send_task(
                PROCESS_PAYMENT,
                args=args,
                kwargs=kwargs,
                retry=True,
                retry_policy={"max_retries": 2},
                producer=producer,
                # what `celery inspect` and logs show, as plain reprs of plain strings:
                # Celery's saferepr of them cost a tenth of the request's CPU
                argsrepr=repr(args),
                kwargsrepr=repr(kwargs),
                ignore_result=True,
            )
    except Exception as exc:
        _broker.failed(
            f"payment {payment_id} recorded but not enqueued; the requeue sweep will send it",
            exc,
        )
        return False
    _broker.succeeded()
    return True


def payment_key(payment_id: uuid.UUID | str) -> uuid.UUID:
    """A payment id from a UUID or its text; PaymentNotFound if it cannot be one."""
    if isinstance(payment_id, uuid.UUID):
        return payment_id
    try:
        return uuid.UUID(str(payment_id))
    except ValueError:
        raise PaymentNotFound(f"{payment_id!r} is not a payment id") from None


def get_payment(
    payment_id: uuid.UUID | str,
    *,
    database: Database | None = None,
    within_tenant: str | None = None,
) -> PaymentView:
    """The payment's current view, with its provider attempts. ``within_tenant``: as a
    caller bound to that tenant sees it (another tenant's payment is not found)."""
    database = database or get_database()
    key = payment_key(payment_id)
    with database.sessions() as session:
        payment = session.get(Payment, key)
        if payment is None or not in_tenant(payment.tenant_id, within_tenant):
            raise PaymentNotFound(f"no payment {payment_id}")
        attempts = session.execute(
            select(PaymentAttempt)
            .where(PaymentAttempt.payment_id == key)
            .order_by(PaymentAttempt.id)
        ).scalars()
        return view_of(payment, list(attempts))


def in_tenant(owner: str | None, within_tenant: str | None) -> bool:
    """Whether an object of tenant ``owner`` exists for a caller bound to
    ``within_tenant`` (None: a platform-wide caller, who sees every tenant)."""
    return within_tenant is None or owner == within_tenant


def view_of(payment: Payment, attempts: list[PaymentAttempt] | None = None) -> PaymentView:
    return PaymentView(
        id=payment.id,
        tenant_id=payment.tenant_id,
        order_id=payment.order_id,
        idempotency_key=payment.idempotency_key,
        amount=from_minor(payment.amount_minor, payment.currency),
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        customer_email=payment.customer_email,
        payment_method=payment.payment_method,
        metadata=payment.metadata_ or {},
        status=PaymentState(payment.status),
        provider=payment.plugin_name,
        instance_id=payment.instance_id,
        provider_reference=payment.reference,
        provider_transaction_id=payment.provider_transaction_id,
        authorization_url=payment.authorization_url,
        next_action=payment.next_action if payment.status == PaymentState.PENDING.value else None,
        payment_method_id=payment.payment_method_id,
        error_code=payment.error_code,
        error=payment.error_message,
        refunded_minor=payment.refunded_minor,
        created_at=payment.created_at,
        updated_at=payment.updated_at,
        expires_at=payment.expires_at if payment.status == PaymentState.PENDING.value else None,
        route=payment.route_decision,
        attempts=[
            AttemptView(
                plugin_name=a.plugin_name,
                instance_id=a.instance_id,
                operation=a.operation,
                outcome=a.outcome,
                error_code=a.error_code,
                message=a.message,
                latency_ms=a.latency_ms,
                created_at=a.created_at,
                reference=a.reference,
            )
            for a in attempts or []
        ],
    )
