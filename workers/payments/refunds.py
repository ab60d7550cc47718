"""Refunds: billing asks, the payment's own provider instance refunds, the ledger records.

:func:`refund_payment` runs in three steps, so two refunds of one payment can never
together exceed what was charged, even when they race:

1. **reserve**, in one transaction with the payment row locked: check the payment is
   refundable and the amount fits in what is left (charged - refunded - refunds still
   open), then insert the refund as ``requested``;
2. **call** the instance that took the payment (``plugin.refund(reference, amount_minor)``)
   on the process's provider loop;
3. **settle**, in one transaction: the refund's new status and a ``refund`` attempt row;
   if the provider says the money went back, the payment moves to ``partially_refunded``
   or ``refunded`` by compare-and-set on its status *and* ``refunded_minor``, with a
   ``payment.refunded`` outbox event, published right after the commit.

Providers usually queue refunds (Paystack answers ``pending``): the refund stays open,
still reserving its amount, until the provider's refund webhook settles it through
:func:`settle_refund` (see :mod:`workers.payments.webhooks`). A refund whose outcome is unknown
(timeout) stays open the same way: refunding it again could pay the customer twice.

``refunded_minor`` on the payment counts refunds that succeeded, nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from config.logging import log_context
from config.settings import Settings, get_settings
from providers.base import PaymentProvider, RefundOutcome, RefundStatus, utcnow
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderUnavailable,
    RequestRefused,
)
from providers.money import from_minor, to_minor
from registry import audit
from registry.db import Database, get_database
from registry.instances import InstanceView
from registry.secrets import sanitize, secret_values
from registry.service import PluginRegistry
from workers.core import metrics
from workers.core.threads import CallTimeout, ProviderLoop
from workers.events.relay import EventPublisher, publish_now
from workers.ledger.outbox import AlertEvent, EventType, OutboxEvent, add_event
from workers.ledger.records import Payment, PaymentAttempt, Refund, apply_transition, payment_event
from workers.ledger.states import PaymentState
from workers.payments.client import PaymentNotFound, in_tenant, payment_key

log = logging.getLogger(__name__)


class RefundState(StrEnum):
    REQUESTED = "requested"  # reserved; the provider has not answered yet
    PENDING = "pending"  # accepted by the provider (or outcome unknown): awaiting its webhook
    SUCCEEDED = "succeeded"
    FAILED = "failed"


OPEN_REFUNDS = (RefundState.REQUESTED.value, RefundState.PENDING.value)
REFUNDABLE = (PaymentState.SUCCEEDED, PaymentState.PARTIALLY_REFUNDED)

# What a provider's refund answer makes of our refund row.
REFUND_OUTCOME_STATE: dict[RefundStatus, RefundState] = {
    RefundStatus.SUCCEEDED: RefundState.SUCCEEDED,
    RefundStatus.PENDING: RefundState.PENDING,
    RefundStatus.FAILED: RefundState.FAILED,
}


class RefundRefused(ValueError):
    """A refund Tender refuses before calling any provider. ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RefundNotFound(RefundRefused):
    """No refund has that id (an HTTP 404; a refusal like the others elsewhere)."""


class RefundMismatch(RuntimeError):
    """A refund that cannot be added to its payment (it would exceed the amount charged,
    or the payment is not refundable). Never applied; an operator must look."""


class RefundView(BaseModel):
    """A refund as billing sees it, with the payment's refund totals after it."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    payment_id: uuid.UUID
    amount: Decimal
    amount_minor: int
    currency: str
    status: RefundState
    provider_refund_id: str | None
    message: str | None
    payment_status: PaymentState
    refunded_minor: int
    created_at: datetime
    updated_at: datetime


def view_of_refund(refund: Refund, payment: Payment) -> RefundView:
    return RefundView(
        id=refund.id,
        payment_id=refund.payment_id,
        amount=from_minor(refund.amount_minor, payment.currency),
        amount_minor=refund.amount_minor,
        currency=payment.currency,
        status=RefundState(refund.status),
        provider_refund_id=refund.provider_refund_id,
        message=refund.message,
        payment_status=PaymentState(payment.status),
        refunded_minor=payment.refunded_minor,
        created_at=refund.created_at,
        updated_at=refund.updated_at,
    )


# --- ledger helpers shared with the webhook path ----------------------------------------


def lock_payment(
    session: Session,
    *,
    payment_id: uuid.UUID | None = None,
    reference: str | None = None,
    provider_id: tuple[str, str] | None = None,
) -> Payment | None:
    """Load a payment with its row locked for this transaction (PostgreSQL ``FOR UPDATE``;
    SQLite's ``BEGIN IMMEDIATE`` already serializes writers): by id, by reference, or by
    ``(plugin name, the provider's id for it)``."""
    query = select(Payment).with_for_update().execution_options(populate_existing=True)
    if payment_id is not None:
        query = query.where(Payment.id == payment_id)
    elif reference is not None:
        query = query.where(Payment.reference == reference)
    elif provider_id is not None:
        plugin_name, given = provider_id
        query = query.where(
            Payment.provider_transaction_id == given, Payment.plugin_name == plugin_name
        )
    else:
        raise TypeError("lock_payment needs payment_id, reference or provider_id")
    return session.execute(query).scalar_one_or_none()


def open_refunds_minor(session: Session, payment_id: uuid.UUID) -> int:
    """What refunds not yet settled hold back (they may still succeed)."""
    total = session.execute(
        select(func.coalesce(func.sum(Refund.amount_minor), 0)).where(
            Refund.payment_id == payment_id, Refund.status.in_(OPEN_REFUNDS)
        )
    ).scalar_one()
    return int(total)


def refundable_minor(session: Session, payment: Payment) -> int:
    """Charged, minus refunded, minus refunds still open."""
    return payment.amount_minor - payment.refunded_minor - open_refunds_minor(session, payment.id)


def settled_state(amount_minor: int, refunded_minor: int) -> PaymentState:
    """A charged payment's state from how much of it is refunded."""
    if refunded_minor == 0:
        return PaymentState.SUCCEEDED
    if refunded_minor >= amount_minor:
        return PaymentState.REFUNDED
    return PaymentState.PARTIALLY_REFUNDED


def settle_refund(session: Session, payment: Payment, refund: Refund) -> OutboxEvent | None:
    """Mark ``refund`` succeeded and add it to ``payment`` (locked by the caller):
    ``partially_refunded`` or ``refunded`` by compare-and-set on status and
    ``refunded_minor``, plus the ``payment.refunded`` outbox event. Raises
    :class:`RefundMismatch` (nothing written) if it does not fit the payment."""
    current = PaymentState(payment.status)
    seen = payment.refunded_minor
    total = seen + refund.amount_minor
    # A refund made before a dispute opened can still settle during it: it counts, and the
    # payment stays disputed (its state after the dispute follows from refunded_minor).
    if current not in (*REFUNDABLE, PaymentState.DISPUTED) or total > payment.amount_minor:
        raise RefundMismatch(
            f"refund {refund.id} of {refund.amount_minor} minor units does not fit payment "
            f"{payment.id} ({current.value}, {seen} of {payment.amount_minor} refunded)"
        )
    new = (
        current if current is PaymentState.DISPUTED else settled_state(payment.amount_minor, total)
    )
    _move_refunded(session, payment, refund, current, new, seen, total)
    refund.status = RefundState.SUCCEEDED.value
    refund.updated_at = utcnow()
    event = add_event(
        session,
        payment_event(payment, new, event_type=EventType.PAYMENT_REFUNDED, refunded_minor=total),
    )
    session.flush()
    session.refresh(payment)
    return event


def _move_refunded(
    session: Session,
    payment: Payment,
    refund: Refund,
    current: PaymentState,
    new: PaymentState,
    seen: int,
    total: int,
) -> None:
    """Compare-and-set the payment's state and ``refunded_minor`` (``seen`` -> ``total``)."""
    if not apply_transition(
        session,
        payment.id,
        current,
        new,
        where=(Payment.refunded_minor == seen,),
        refunded_minor=total,
    ):
        # Unreachable while the caller holds the row lock; refuse rather than lose an update.
        raise RefundMismatch(f"payment {payment.id} changed while refund {refund.id} settled")


def fail_refund(
    session: Session, payment: Payment, refund: Refund, message: str | None
) -> list[OutboxEvent]:
    """The provider reports ``refund`` failed (``payment`` locked by the caller): it moves
    to ``failed`` and ``refund.failed`` goes out. One that had succeeded (Stripe documents
    ``refund.failed`` after success, the money back in the merchant's balance) is taken
    off the payment again, its amount refundable once more, with an alert: the ledger said
    refunded and the customer got nothing. Raises :class:`RefundMismatch` if the payment
    does not hold that refund."""
    reversed_ = refund.status == RefundState.SUCCEEDED.value
    fields: dict[str, Any] = {}
    current = new = PaymentState(payment.status)
    if reversed_:
        seen = payment.refunded_minor
        total = seen - refund.amount_minor
        holding = (PaymentState.REFUNDED, PaymentState.PARTIALLY_REFUNDED, PaymentState.DISPUTED)
        if total < 0 or current not in holding:
            raise RefundMismatch(
                f"refund {refund.id} of {refund.amount_minor} failed, but payment {payment.id} "
                f"({current.value}, {seen} refunded) does not hold it"
            )
        new = (
            current
            if current is PaymentState.DISPUTED
            else settled_state(payment.amount_minor, total)
        )
        _move_refunded(session, payment, refund, current, new, seen, total)
        fields["refunded_minor"] = total
    refund.status = RefundState.FAILED.value
    refund.message = message
    refund.updated_at = utcnow()
    events = [
        add_event(
            session,
            payment_event(
                payment,
                new,
                event_type=EventType.REFUND_FAILED,
                refund=refund,
                **fields,
            ),
        )
    ]
    if reversed_:
        amount = f"{from_minor(refund.amount_minor, payment.currency)} {payment.currency}"
        text = (
            f"Refund {refund.id} of {amount} (payment {payment.id}, order {payment.order_id}) "
            f"failed at {payment.plugin_name} after it had succeeded"
            f"{f' ({message})' if message else ''}: the customer did not get the money. "
            f"The payment is {new.value} again and the amount can be refunded anew."
        )
        log.error("%s", text)
        alert = AlertEvent(
            severity="critical",
            title="refund failed after it succeeded",
            text=text,
            instance_id=payment.instance_id,
            tenant_id=payment.tenant_id,
        )
        events.append(add_event(session, alert))
    session.flush()
    if reversed_:
        session.refresh(payment)
    return events


# --- refund_payment -------------------------------------------------------------------


@dataclass(frozen=True)
class _Reservation:
    refund_id: uuid.UUID
    payment_id: uuid.UUID
    reference: str
    amount_minor: int
    instance: InstanceView
    provider_id: str | None = None  # the payment's own id at the provider, if held
    currency: str | None = None  # the payment's


@dataclass(frozen=True)
class _Answer:
    """The provider's answer to one refund call, as the ledger records it."""

    state: RefundState
    attempt_outcome: str  # succeeded | pending | failed | unavailable | unknown | config_error
    latency_ms: float
    provider_refund_id: str | None = None
    error_code: str | None = None
    message: str | None = None


def refund_payment(
    payment_id: uuid.UUID | str,
    amount: Decimal | int | str | None = None,
    *,
    database: Database | None = None,
    registry: PluginRegistry | None = None,
    loop: ProviderLoop | None = None,
    publisher: EventPublisher | None = None,
    settings: Settings | None = None,
    actor: str = "code",
    within_tenant: str | None = None,
) -> RefundView:
    """Refund ``amount`` (major units, ``Decimal("5.00")``; ``None``: all that is left)
    of a succeeded or partially refunded payment through the instance that took it.
    The request is audited with ``actor`` (``refund.request``); ``within_tenant``: as a
    caller bound to that tenant (another tenant's payment is not found).

    Raises :class:`PaymentNotFound`, :class:`RefundRefused` or a
    :class:`~providers.money.MoneyError` before calling the provider. Otherwise returns
    the refund: ``succeeded``, ``pending`` (the provider's webhook will settle it) or
    ``failed`` (nothing was refunded; ``message`` says why).
    """
    from workers import runtime

    database = database or get_database()
    registry = registry or runtime.registry()
    loop = loop or runtime.provider_loop()
    settings = settings or get_settings()
    if publisher is None:
        from workers.core.app import app

        publisher = EventPublisher(app)

    reservation = _reserve(
        database, registry, payment_key(payment_id), amount, actor, within_tenant
    )
    with log_context(
        payment_id=payment_id, reference=reservation.reference,
        instance=reservation.instance.display_name,
    ):  # fmt: skip
        answer = _call_provider(registry, loop, settings, reservation)
    view, outbox_ids = _settle(database, reservation, answer)
    publish_now(database, publisher, outbox_ids)
    log.info(
        "refund %s of payment %s (%d minor units): %s%s",
        view.id,
        view.payment_id,
        view.amount_minor,
        view.status.value,
        f": {view.message}" if view.message else "",
    )
    return view


def list_refunds(
    payment_id: uuid.UUID | str,
    *,
    database: Database | None = None,
    within_tenant: str | None = None,
) -> list[RefundView]:
    """The payment's refunds, oldest first."""
    database = database or get_database()
    key = payment_key(payment_id)
    with database.sessions() as session:
        payment = session.get(Payment, key)
        if payment is None or not in_tenant(payment.tenant_id, within_tenant):
            raise PaymentNotFound(f"no payment {payment_id}")
        refunds = session.execute(
            select(Refund).where(Refund.payment_id == key).order_by(Refund.created_at)
        ).scalars()
        return [view_of_refund(refund, payment) for refund in refunds]


def _instance_of(registry: PluginRegistry, payment: Payment) -> InstanceView:
    if payment.instance_id is None:
        raise RefundRefused("payment", "no provider instance is recorded for it")
    for fresh in (False, True):
        if fresh:
            registry.refresh(force=True)
        found = next((v for v in registry.snapshot() if v.id == payment.instance_id), None)
        if found is not None:
            return found
    raise RefundRefused(
        "payment",
        f"the provider instance that took it ({payment.plugin_name}, {payment.instance_id}) "
        "was retired; refund it in the provider's dashboard",
    )


def _reserve(
    database: Database,
    registry: PluginRegistry,
    payment_id: uuid.UUID,
    amount: Decimal | int | str | None,
    actor: str = "code",
    within_tenant: str | None = None,
) -> _Reservation:
    """Step 1: validate and hold the amount, with the payment row locked."""
    with database.transaction() as session:
        payment = lock_payment(session, payment_id=payment_id)
        if payment is None or not in_tenant(payment.tenant_id, within_tenant):
            raise PaymentNotFound(f"no payment {payment_id}")
        state = PaymentState(payment.status)
        if state not in REFUNDABLE:
            raise RefundRefused(
                "payment",
                f"is {state.value}; only succeeded or partially refunded payments can be refunded",
            )
        available = refundable_minor(session, payment)
        amount_minor = available if amount is None else to_minor(amount, payment.currency)
        if available <= 0:
            raise RefundRefused(
                "amount",
                f"nothing left to refund: {_money(payment.refunded_minor, payment)} of "
                f"{_money(payment.amount_minor, payment)} refunded, "
                f"{_money(open_refunds_minor(session, payment.id), payment)} in refunds still open",
            )
        if amount_minor > available:
            raise RefundRefused(
                "amount",
                f"{_money(amount_minor, payment)} exceeds the {_money(available, payment)} "
                f"still refundable (charged {_money(payment.amount_minor, payment)}, refunded "
                f"{_money(payment.refunded_minor, payment)}, the rest in refunds still open)",
            )
        instance = _instance_of(registry, payment)
        refund = Refund(
            id=uuid.uuid4(),
            payment_id=payment.id,
            amount_minor=amount_minor,
            status=RefundState.REQUESTED.value,
        )
        session.add(refund)
        audit.record(
            session,
            actor,
            "refund.request",
            str(refund.id),
            None,
            {"payment_id": str(payment.id), "amount": _money(amount_minor, payment)},
            tenant_id=payment.tenant_id,
        )
        return _Reservation(
            refund.id,
            payment.id,
            payment.reference,
            amount_minor,
            instance,
            payment.provider_transaction_id,
            payment.currency,
        )


def _money(amount_minor: int, payment: Payment) -> str:
    return f"{from_minor(amount_minor, payment.currency)} {payment.currency}"


def _call_provider(
    registry: PluginRegistry, loop: ProviderLoop, settings: Settings, reservation: _Reservation
) -> _Answer:
    """Step 2: one refund call, its errors classified by what they prove."""
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return (time.perf_counter() - started) * 1000

    plugin: PaymentProvider | None = None
    try:
        plugin = registry.plugin_for(reservation.instance)
        outcome = loop.run(
            plugin.refund(
                reservation.reference,
                reservation.amount_minor,
                refund_key=str(reservation.refund_id),  # the provider's idempotency key
                provider_id=reservation.provider_id,
                currency=reservation.currency,
            ),
            settings.provider_timeout_s,
        )
    except ConfigurationError as exc:
        answer = _Answer(RefundState.FAILED, "config_error", elapsed_ms(), None, exc.code, str(exc))
    except ProviderUnavailable as exc:  # provably not sent: nothing was refunded
        answer = _Answer(RefundState.FAILED, "unavailable", elapsed_ms(), None, exc.code, str(exc))
    except (PaymentDeclined, RequestRefused) as exc:  # refused (the refund, or the account)
        answer = _Answer(RefundState.FAILED, "failed", elapsed_ms(), None, exc.code, exc.message)
    except (OutcomeUnknown, CallTimeout) as exc:  # sent, no answer: maybe refunded
        answer = _unknown(exc, elapsed_ms())
    except Exception as exc:  # a plugin bug after sending is as ambiguous as a timeout
        log.exception("plugin %s raised unexpectedly on refund", reservation.instance.label)
        answer = _unknown(exc, elapsed_ms())
    else:
        answer = _answered(outcome, reservation, elapsed_ms())
    metrics.PROVIDER_CALL_SECONDS.labels(reservation.instance.plugin_name, "refund").observe(
        answer.latency_ms / 1000
    )
    # The provider's words go into the ledger and events: never a piece of a key.
    message = answer.message and sanitize(answer.message, secret_values(plugin))
    return dataclasses.replace(answer, message=message)


def _answered(outcome: RefundOutcome, reservation: _Reservation, latency_ms: float) -> _Answer:
    if outcome.amount_minor is not None and outcome.amount_minor != reservation.amount_minor:
        log.warning(
            "provider reports refund of %s minor units for %s; %s were asked",
            outcome.amount_minor,
            reservation.reference,
            reservation.amount_minor,
        )
    return _Answer(
        REFUND_OUTCOME_STATE[outcome.status],
        outcome.status.value,
        latency_ms,
        outcome.refund_id,
        None,
        outcome.message,
    )


def _unknown(exc: Exception, latency_ms: float) -> _Answer:
    return _Answer(
        RefundState.PENDING,
        "unknown",
        latency_ms,
        None,
        getattr(exc, "code", None) or "outcome_unknown",
        f"outcome unknown ({exc}); the amount stays reserved until the provider's "
        "refund webhook settles it",
    )


def _settle(
    database: Database, reservation: _Reservation, answer: _Answer
) -> tuple[RefundView, list[int]]:
    """Step 3: record the answer; a refund that succeeded moves the payment."""
    outbox_ids: list[int] = []
    with database.transaction() as session:
        payment = lock_payment(session, payment_id=reservation.payment_id)
        refund = session.get(Refund, reservation.refund_id, with_for_update=True)
        assert payment is not None and refund is not None  # reserved above; never deleted
        session.add(
            PaymentAttempt(
                payment_id=payment.id,
                instance_id=reservation.instance.id,
                plugin_name=reservation.instance.plugin_name,
                operation="refund",
                outcome=answer.attempt_outcome,
                error_code=answer.error_code,
                message=answer.message,
                latency_ms=answer.latency_ms,
            )
        )
        final = {RefundState.SUCCEEDED.value, RefundState.FAILED.value}
        if refund.status in final and answer.state.value in final - {refund.status}:
            # settled meanwhile, by its webhook or an operator, the other way than the
            # provider answers now: a person must look (the attempt row has the answer)
            log.error(
                "refund %s of payment %s is %s, but the provider's late answer is %s",
                refund.id,
                payment.id,
                refund.status,
                answer.state.value,
            )
        if refund.status in OPEN_REFUNDS:  # else its webhook already settled it
            if answer.provider_refund_id and refund.provider_refund_id is None:
                refund.provider_refund_id = answer.provider_refund_id
            refund.message = answer.message
            refund.updated_at = utcnow()
            if answer.state is RefundState.SUCCEEDED:
                event = settle_refund(session, payment, refund)
                if event is not None:
                    outbox_ids.append(event.id)
            else:
                refund.status = answer.state.value
        session.flush()
        return view_of_refund(refund, payment), outbox_ids


# --- refunds the provider never answered --------------------------------------------------

REASON_MAX = 500


def _plain_text(field: str, value: str | None, limit: int) -> str:
    text = (value or "").strip()
    if not text or len(text) > limit or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise RefundRefused(field, f"must be 1 to {limit} characters on one line")
    return text


def settle_refund_by_operator(
    refund_id: uuid.UUID | str,
    succeeded: bool,
    reason: str,
    *,
    provider_refund_id: str | None = None,
    database: Database | None = None,
    publisher: EventPublisher | None = None,
    actor: str = "code",
    within_tenant: str | None = None,
) -> RefundView:
    """Settle an open refund by hand, once an operator has checked it at the provider,
    audited with ``actor`` (``refund.settle``).

    For a refund no answer will come for: a process that stopped mid-call leaves it
    ``requested`` (reconcile alerts on those), a timeout leaves it ``pending`` with no
    provider refund id.

    * ``succeeded`` (the provider shows it processed): the payment moves as the provider's
      webhook would move it, with its ``payment.refunded`` event. The provider's refund id
      is required (unless the refund has one) and recorded, so that its webhook, which may
      still come, finds this refund settled instead of counting the money twice.
    * failed (the provider has no such refund): its amount is released. Refused for a
      refund the provider acknowledged (it has a provider refund id): its webhook settles
      that one. Only for a refund that is provably absent at the provider: if one arrives
      after all, its webhook records it as made outside Tender.

    Recorded as a ``refund`` attempt with outcome ``manual`` and the reason. Raises
    :class:`RefundRefused` (nothing written) for an unknown, settled or acknowledged
    refund, or a missing reason or provider refund id.
    """
    database = database or get_database()
    why = _plain_text("reason", reason, REASON_MAX)
    given_id = (
        _plain_text("provider_refund_id", provider_refund_id, 200)
        if provider_refund_id is not None
        else None
    )
    try:
        key = uuid.UUID(str(refund_id))
    except ValueError:
        raise RefundNotFound("refund", f"{refund_id!r} is not a refund id") from None
    outbox_ids: list[int] = []
    with database.transaction() as session:
        found = session.get(Refund, key)
        if found is None:
            raise RefundNotFound("refund", f"no refund {key}")
        payment = lock_payment(session, payment_id=found.payment_id)  # then the refund,
        refund = session.get(Refund, key, with_for_update=True, populate_existing=True)
        assert payment is not None and refund is not None  # as refund_payment locks them
        if not in_tenant(payment.tenant_id, within_tenant):
            raise RefundNotFound("refund", f"no refund {key}")
        if refund.status not in OPEN_REFUNDS:
            raise RefundRefused(
                "refund", f"is already {refund.status}; only an open refund can be settled"
            )
        known_id = refund.provider_refund_id
        if not succeeded and known_id is not None:
            raise RefundRefused(
                "refund",
                f"the provider acknowledged it as {known_id}: its webhook settles it, and "
                "--failed is only for a refund the provider never answered",
            )
        if succeeded:
            if known_id is not None and given_id not in (None, known_id):
                raise RefundRefused(
                    "provider_refund_id", f"the provider acknowledged it as {known_id}"
                )
            given_id = given_id or known_id
            if given_id is None:
                raise RefundRefused(
                    "provider_refund_id",
                    "is required to settle as succeeded (the provider's id of the refund)",
                )
            other = session.execute(
                select(Refund.id).where(
                    Refund.provider_refund_id == given_id, Refund.id != refund.id
                )
            ).scalar_one_or_none()
            if other is not None:
                raise RefundRefused(
                    "provider_refund_id", f"{given_id} is already recorded for refund {other}"
                )
            refund.provider_refund_id = given_id
        outcome = RefundState.SUCCEEDED if succeeded else RefundState.FAILED
        message = f"settled {outcome.value} by an operator: {why}"
        session.add(
            PaymentAttempt(
                payment_id=payment.id,
                instance_id=payment.instance_id,
                plugin_name=payment.plugin_name or "operator",
                operation="refund",
                outcome="manual",
                message=message,
                latency_ms=0.0,
            )
        )
        refund.message = message
        refund.updated_at = utcnow()
        if succeeded:
            try:
                event = settle_refund(session, payment, refund)
            except RefundMismatch as exc:  # nothing is written: the transaction rolls back
                raise RefundRefused("refund", str(exc)) from None
            if event is not None:
                outbox_ids.append(event.id)
        else:
            refund.status = RefundState.FAILED.value
        audit.record(
            session,
            actor,
            "refund.settle",
            str(refund.id),
            {"status": "open"},
            {"status": refund.status, "reason": why, "provider_refund_id": given_id},
            tenant_id=payment.tenant_id,
        )
        session.flush()
        view = view_of_refund(refund, payment)
    if publisher is None:
        from workers.core.app import app

        publisher = EventPublisher(app)
    publish_now(database, publisher, outbox_ids)
    log.warning("refund %s of payment %s: %s", view.id, view.payment_id, message)
    return view


def stuck_refunds(
    session: Session, now: datetime, settings: Settings, limit: int = 200
) -> list[tuple[Refund, Payment]]:
    """Refunds with no provider answer ``reconcile_age_s`` after their last change, due
    an alert (never alerted, or last alerted ``alert_cooldown_s`` ago): still
    ``requested`` (a refund call records its answer within the provider timeout, so the
    caller stopped mid-call), or ``pending`` with no provider refund id (the call timed
    out: the provider may or may not have it). Their rows are locked for the caller's
    transaction (PostgreSQL; rows another transaction holds, one being settled, are
    skipped)."""
    old = now - timedelta(seconds=settings.reconcile_age_s)
    remind = now - timedelta(seconds=settings.alert_cooldown_s)
    rows = session.execute(
        select(Refund, Payment)
        .join(Payment, Payment.id == Refund.payment_id)
        .where(
            or_(
                Refund.status == RefundState.REQUESTED.value,
                (Refund.status == RefundState.PENDING.value) & Refund.provider_refund_id.is_(None),
            ),
            Refund.updated_at < old,
            or_(Refund.alerted_at.is_(None), Refund.alerted_at < remind),
        )
        .order_by(Refund.updated_at)
        .limit(limit)
        .with_for_update(of=Refund, skip_locked=True)
    ).all()
    return [(refund, payment) for refund, payment in rows]
