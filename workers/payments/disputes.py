"""Disputes: a customer's chargeback, inquiry or claim against a payment, from the webhooks
its provider sends (Stripe ``charge.dispute.*``, Paystack ``charge.dispute.*``, PayPal
``CUSTOMER.DISPUTE.*``; docs/providers.md lists each one's statuses).

A dispute that opens moves the payment to ``disputed`` (the money is held: no refund is
taken while it is open, as Stripe refuses one with ``charge_disputed``), publishes
``payment.disputed`` and raises an alert naming the amount and the date evidence is due.
When it closes, ``payment.dispute_closed`` goes out: won, the payment goes back to what
its refunds make it (succeeded, partially refunded, refunded); lost, it is
``charged_back``. Updates in between (a reminder, a new deadline) update the dispute row.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from providers.base import DisputeOutcome, DisputeStatus, utcnow
from providers.money import from_minor
from workers.ledger.outbox import AlertEvent, EventType, OutboxEvent, add_event
from workers.ledger.records import Dispute, Payment, apply_transition, payment_event
from workers.ledger.states import PaymentState
from workers.payments.refunds import REFUNDABLE, settled_state

log = logging.getLogger(__name__)

# A dispute may open on a payment that was charged, whatever its refunds since, or on one
# charged back before (an appeal reopens it).
_DISPUTABLE = (*REFUNDABLE, PaymentState.REFUNDED, PaymentState.CHARGED_BACK)


class DisputeConflict(RuntimeError):
    """The dispute does not fit the ledger (a payment never charged, another currency):
    nothing is applied and an operator is alerted."""


@dataclass(frozen=True)
class DisputeApplied:
    detail: str
    events: list[OutboxEvent]
    changed: bool = True


def apply_dispute(
    session: Session, payment: Payment, outcome: DisputeOutcome, provider: str
) -> DisputeApplied:
    """Record ``outcome`` for ``payment`` (locked by the caller) and move the payment.
    Raises :class:`DisputeConflict` (nothing written) when it does not fit the ledger."""
    current = PaymentState(payment.status)
    if outcome.currency is not None and outcome.currency != payment.currency:
        raise DisputeConflict(
            f"{provider} dispute {outcome.dispute_id} of payment {payment.id} is in "
            f"{outcome.currency}; the payment is in {payment.currency}"
        )
    if current not in (*_DISPUTABLE, PaymentState.DISPUTED):
        raise DisputeConflict(
            f"{provider} reports dispute {outcome.dispute_id} ({outcome.status.value}) for "
            f"payment {payment.id} ({payment.reference}), which the ledger has "
            f"{current.value}: a dispute needs a charge. Not applied."
        )
    dispute = _dispute_row(session, payment, outcome)
    before = (dispute.status, dispute.due_by, dispute.amount_minor, dispute.provider_status)
    _update(dispute, outcome)
    if outcome.status is DisputeStatus.OPEN:
        if current is PaymentState.DISPUTED:
            changed = before != (
                dispute.status,
                dispute.due_by,
                dispute.amount_minor,
                dispute.provider_status,
            )
            session.flush()
            return DisputeApplied(
                "dispute updated" if changed else "dispute unchanged", [], changed
            )
        return _open(session, payment, dispute, current, provider)
    return _close(session, payment, dispute, current, provider)


def _dispute_row(session: Session, payment: Payment, outcome: DisputeOutcome) -> Dispute:
    found = session.execute(
        select(Dispute)
        .where(
            Dispute.payment_id == payment.id,
            Dispute.provider_dispute_id == outcome.dispute_id,
        )
        .with_for_update()
    ).scalar_one_or_none()
    if found is not None:
        return found
    dispute = Dispute(
        id=uuid.uuid4(),
        payment_id=payment.id,
        provider_dispute_id=outcome.dispute_id,
        status=DisputeStatus.OPEN.value,
        currency=payment.currency,
    )
    session.add(dispute)
    return dispute


def _update(dispute: Dispute, outcome: DisputeOutcome) -> None:
    dispute.status = outcome.status.value
    dispute.provider_status = outcome.provider_status
    if outcome.amount_minor is not None:
        dispute.amount_minor = outcome.amount_minor
    if outcome.reason:
        dispute.reason = outcome.reason[:200]
    if outcome.due_by is not None:
        dispute.due_by = outcome.due_by
    dispute.updated_at = utcnow()
    if outcome.status is not DisputeStatus.OPEN and dispute.closed_at is None:
        dispute.closed_at = dispute.updated_at


def _open(
    session: Session,
    payment: Payment,
    dispute: Dispute,
    current: PaymentState,
    provider: str,
) -> DisputeApplied:
    _move(session, payment, current, PaymentState.DISPUTED)
    events = [
        add_event(session, payment_event(payment, PaymentState.DISPUTED, dispute=dispute)),
        add_event(session, _alert(payment, dispute, provider, opened=True)),
    ]
    session.flush()
    log.warning("payment %s disputed at %s (%s)", payment.id, provider, dispute.provider_dispute_id)
    return DisputeApplied("disputed", events)


def _close(
    session: Session,
    payment: Payment,
    dispute: Dispute,
    current: PaymentState,
    provider: str,
) -> DisputeApplied:
    lost = dispute.status == DisputeStatus.LOST.value
    still_open = session.execute(
        select(Dispute.id).where(
            Dispute.payment_id == payment.id,
            Dispute.id != dispute.id,
            Dispute.status == DisputeStatus.OPEN.value,
        )
    ).first()
    if lost:
        new = PaymentState.CHARGED_BACK
    elif still_open is not None:
        new = PaymentState.DISPUTED
    elif current in (PaymentState.DISPUTED, PaymentState.CHARGED_BACK):
        new = settled_state(payment.amount_minor, payment.refunded_minor)
    else:
        new = current  # closed without our having seen it open: nothing to give back
    if new is not current or current is PaymentState.DISPUTED:
        _move(session, payment, current, new)
    events = [
        add_event(
            session,
            payment_event(
                payment, new, event_type=EventType.PAYMENT_DISPUTE_CLOSED, dispute=dispute
            ),
        ),
        add_event(session, _alert(payment, dispute, provider, opened=False)),
    ]
    session.flush()
    log.warning(
        "payment %s: dispute %s at %s closed %s; payment %s",
        payment.id,
        dispute.provider_dispute_id,
        provider,
        dispute.status,
        new.value,
    )
    return DisputeApplied(f"dispute {dispute.status}", events)


def _move(session: Session, payment: Payment, current: PaymentState, new: PaymentState) -> None:
    if not apply_transition(session, payment.id, current, new):
        # Unreachable while the caller holds the row lock.
        raise DisputeConflict(f"payment {payment.id} changed while its dispute was applied")
    session.refresh(payment)


def _alert(payment: Payment, dispute: Dispute, provider: str, *, opened: bool) -> AlertEvent:
    amount_minor = (
        dispute.amount_minor if dispute.amount_minor is not None else payment.amount_minor
    )
    amount = f"{from_minor(amount_minor, payment.currency)} {payment.currency}"
    where = f"payment {payment.id} (order {payment.order_id}) at {provider}"
    if opened:
        due = f"; evidence due by {dispute.due_by:%Y-%m-%d %H:%M} UTC" if dispute.due_by else ""
        reason = f" ({dispute.reason})" if dispute.reason else ""
        return AlertEvent(
            severity="critical",
            title="payment disputed",
            text=f"Dispute {dispute.provider_dispute_id} of {amount}{reason} on {where}{due}.",
            instance_id=payment.instance_id,
            tenant_id=payment.tenant_id,
        )
    lost = dispute.status == DisputeStatus.LOST.value
    return AlertEvent(
        severity="critical" if lost else "info",
        title="dispute lost" if lost else "dispute won",
        text=(
            f"Dispute {dispute.provider_dispute_id} of {amount} on {where} closed "
            + (
                "in the customer's favour: the money went back to them."
                if lost
                else "in the merchant's favour: the money stays."
            )
        ),
        instance_id=payment.instance_id,
        tenant_id=payment.tenant_id,
    )
