"""Reconcile: make the ledger agree with the providers and the queue.

Run by beat (``tender.reconcile``) under a lock, so runs never overlap:

* ``requested`` payments older than ``reconcile_age_s``: their task was lost
  (broker dropped it, enqueue failed) -> enqueue again (the claim makes it once);
* ``processing`` payments whose lease expired: their worker died -> enqueue again
  (the task verifies with the instance that was being called before anything else);
  both oldest first, up to ``LOST_BATCHES`` x ``BATCH`` a run, a ``requested`` one
  moving to the back once enqueued so that a backlog cannot starve the rest;
* ``pending`` and ``unknown`` payments on a backoff schedule (Kill Bill's janitor:
  unknown 5 min, 1 h, then daily three times; pending 1 h, then daily; both settings):
  verify with their provider by its own id and move them to what the provider says.
  Each compare-and-set succeeds once, so each payment resolves (and emits its event)
  exactly once. An unknown one still unresolved after its last check raises one alert;
* ``pending`` payments past their expiry: make the checkout unpayable where the provider
  allows it (``expire_checkout``), verify once more, and only then fail them with reason
  ``expired``. A success the provider reports later still wins (webhooks: failed ->
  succeeded);
* refunds with no provider answer ``reconcile_age_s`` after their last change (still
  ``requested``: their caller stopped mid-call; ``pending`` with no provider refund id:
  the call timed out): one alert a run lists them, each again every ``alert_cooldown_s``,
  for an operator to check at the provider (``tender refunds settle``);
* refunds ``pending`` at a provider that can read them back (``READS_REFUNDS``), every
  ``refund_check_interval_s``: read by the provider's refund id and settled or failed as
  the provider says. PayPal sends no webhook when a pending refund fails or is cancelled,
  so without this its amount would stay reserved for ever.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, tuple_, update

from config.settings import Settings
from providers.base import (
    Capability,
    OutcomeStatus,
    PaymentOutcome,
    RefundStatus,
    customer_action,
    utcnow,
)
from providers.money import from_minor
from registry.db import Database
from registry.instances import InstanceView
from registry.service import PluginRegistry
from workers.core import metrics
from workers.core.threads import ProviderLoop
from workers.events.relay import EventPublisher, publish_now
from workers.ledger.outbox import add_event
from workers.ledger.records import (
    Payment,
    PaymentAttempt,
    Refund,
    apply_transition,
    late_success_alert,
    payment_event,
)
from workers.ledger.states import OUTCOME_STATE, PaymentState
from workers.monitoring.alerts import Alert
from workers.payments.methods import expiry_sweep, save_from_success
from workers.payments.processor import outcome_mismatch
from workers.payments.refunds import (
    RefundMismatch,
    RefundState,
    fail_refund,
    lock_payment,
    settle_refund,
    stuck_refunds,
)

log = logging.getLogger(__name__)
BATCH = 200
LOST_BATCHES = 25  # at most BATCH x this lost payments enqueued again per run


@dataclass
class ReconcileReport:
    reenqueued: list[uuid.UUID] = field(default_factory=list)
    resolved: dict[uuid.UUID, str] = field(default_factory=dict)
    still_open: list[uuid.UUID] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)  # for the caller's sinks


def reconcile(
    database: Database,
    registry: PluginRegistry,
    loop: ProviderLoop,
    publisher: EventPublisher,
    settings: Settings,
    enqueue: Callable[[uuid.UUID], bool],
) -> ReconcileReport:
    report = ReconcileReport()
    metrics.RECONCILE_RUNS.inc()
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.reconcile_age_s)
    deadline = time.monotonic() + verify_budget_s(settings)
    _reenqueue_lost(database, now, cutoff, deadline, enqueue, report)
    with database.sessions() as session:
        open_payments = list(
            session.execute(
                select(Payment).where(_due(now, settings)).order_by(Payment.updated_at).limit(BATCH)
            ).scalars()
        )
    for payment in open_payments:
        if time.monotonic() > deadline:
            break  # the rest wait for the next run
        state = _verify_one(database, registry, loop, publisher, settings, payment, report)
        if state is None:
            report.still_open.append(payment.id)
        else:
            report.resolved[payment.id] = state.value
            metrics.RECONCILE_FIXED.labels(state.value).inc()
    _read_pending_refunds(database, registry, loop, publisher, settings, deadline, report)
    expiring = expiry_sweep(database, settings.payment_method_expiry_notice_days)
    if expiring:
        publish_now(database, publisher, expiring)
    _alert_stuck_refunds(database, publisher, settings, utcnow(), report)
    if report.reenqueued or report.resolved:
        log.info(
            "reconcile: re-enqueued %d, resolved %d, still open %d",
            len(report.reenqueued),
            len(report.resolved),
            len(report.still_open),
        )
    return report


def requeue_lost(
    database: Database,
    settings: Settings,
    enqueue: Callable[[uuid.UUID], bool],
) -> list[uuid.UUID]:
    """The requeue sweep (beat, every ``requeue_interval_s``, and a worker on connecting
    to the broker): enqueue again every ``requested`` payment last enqueued more than
    ``requeue_after_s`` ago and every ``processing`` one whose lease expired. A broker
    that lost its messages costs a payment seconds, not reconcile's minutes; a message
    sent twice is harmless, since the claim is a compare-and-set."""
    now = utcnow()
    report = ReconcileReport()
    cutoff = now - timedelta(seconds=settings.requeue_after_s)
    deadline = time.monotonic() + max(settings.requeue_interval_s * 0.8, 1.0)
    _reenqueue_lost(database, now, cutoff, deadline, enqueue, report)
    if report.reenqueued:
        shown = ", ".join(str(payment_id) for payment_id in report.reenqueued[:10])
        log.info(
            "requeue sweep: enqueued %d payment(s) again: %s%s",
            len(report.reenqueued),
            shown,
            ", ..." if len(report.reenqueued) > 10 else "",
        )
    return report.reenqueued


def _reenqueue_lost(
    database: Database,
    now: datetime,
    cutoff: datetime,
    deadline: float,
    enqueue: Callable[[uuid.UUID], bool],
    report: ReconcileReport,
) -> None:
    """Enqueue again every payment whose message was lost, up to ``LOST_BATCHES`` batches
    a run (a restarted Redis can lose thousands at once), oldest first:

    * ``requested`` ones older than the cutoff. Each one enqueued moves to the back of
      the queue (``updated_at`` now, if it is still ``requested``), so the next batch,
      and the next run, reach the others even while these wait in a backlog;
    * ``processing`` ones whose lease expired (their worker died), by lease expiry; the
      task that takes them over renews the lease.

    Stops at the first refused enqueue (the broker is down: the next run tries again).
    """
    requested = PaymentState.REQUESTED.value
    for _ in range(LOST_BATCHES):
        if time.monotonic() > deadline:
            return
        with database.sessions() as session:
            ids = list(
                session.execute(
                    select(Payment.id)
                    .where(Payment.status == requested, Payment.updated_at < cutoff)
                    .order_by(Payment.updated_at, Payment.id)
                    .limit(BATCH)
                ).scalars()
            )
        if ids and not _enqueue_all(ids, enqueue, report):
            return
        _touch(database, ids, requested)
        if len(ids) < BATCH:
            break
    expired = Payment.status == PaymentState.PROCESSING.value, Payment.lease_expires_at < now
    after: tuple[datetime | None, uuid.UUID] | None = None  # keyset: lease expiry, id
    for _ in range(LOST_BATCHES):
        if time.monotonic() > deadline:
            return
        query = select(Payment.id, Payment.lease_expires_at).where(*expired)
        if after is not None:
            query = query.where(tuple_(Payment.lease_expires_at, Payment.id) > after)
        with database.sessions() as session:
            rows = session.execute(
                query.order_by(Payment.lease_expires_at, Payment.id).limit(BATCH)
            ).all()
        if not rows:
            return
        if not _enqueue_all([payment_id for payment_id, _ in rows], enqueue, report):
            return
        after = (rows[-1][1], rows[-1][0])
        if len(rows) < BATCH:
            return


def _enqueue_all(
    ids: list[uuid.UUID], enqueue: Callable[[uuid.UUID], bool], report: ReconcileReport
) -> bool:
    for payment_id in ids:
        if not enqueue(payment_id):
            log.warning("reconcile: could not enqueue payment %s; trying next run", payment_id)
            return False
        report.reenqueued.append(payment_id)
    return True


REFUNDS_SHOWN = 10  # refunds listed in one stuck-refunds alert; the rest are counted


def _read_pending_refunds(
    database: Database,
    registry: PluginRegistry,
    loop: ProviderLoop,
    publisher: EventPublisher,
    settings: Settings,
    deadline: float,
    report: ReconcileReport,
) -> None:
    """Read back, by the provider's refund id, the refunds still pending at a provider
    that can (``Capability.READS_REFUNDS``), each at most every
    ``refund_check_interval_s``, oldest first; settle or fail them as the provider says."""
    readers = []
    for name in registry.catalogue.names():
        try:
            if Capability.READS_REFUNDS in registry.catalogue.get(name).capabilities:
                readers.append(name)
        except Exception:
            continue
    if not readers:
        return
    due = utcnow() - timedelta(seconds=settings.refund_check_interval_s)
    with database.sessions() as session:
        rows = session.execute(
            select(Refund.id, Payment.id, Payment.instance_id)
            .join(Payment, Payment.id == Refund.payment_id)
            .where(
                Refund.status == RefundState.PENDING.value,
                Refund.provider_refund_id.is_not(None),
                Refund.updated_at < due,
                Payment.plugin_name.in_(readers),
            )
            .order_by(Refund.updated_at)
            .limit(BATCH)
        ).all()
    for refund_id, payment_id, instance_id in rows:
        if time.monotonic() > deadline:
            return  # the rest wait for the next run
        instance = next((v for v in registry.snapshot() if v.id == instance_id), None)
        if instance is None:
            continue
        _read_refund(database, registry, loop, publisher, settings, instance, refund_id, payment_id)


def _read_refund(
    database: Database,
    registry: PluginRegistry,
    loop: ProviderLoop,
    publisher: EventPublisher,
    settings: Settings,
    instance: InstanceView,
    refund_id: uuid.UUID,
    payment_id: uuid.UUID,
) -> None:
    with database.sessions() as session:
        refund = session.get(Refund, refund_id)
        payment = session.get(Payment, payment_id)
        if refund is None or payment is None or refund.provider_refund_id is None:
            return
        provider_refund_id, reference, currency = (
            refund.provider_refund_id,
            payment.reference,
            payment.currency,
        )
    try:
        plugin = registry.plugin_for(instance)
        read = plugin.refund_status(reference, provider_refund_id, currency=currency)
        outcome = loop.run(read, settings.provider_timeout_s)
    except Exception as exc:
        log.warning("reconcile could not read refund %s: %s", refund_id, exc)
        outcome = None
    outbox_ids: list[int] = []
    with database.transaction() as session:
        payment = lock_payment(session, payment_id=payment_id)
        refund = session.get(Refund, refund_id, with_for_update=True)
        if payment is None or refund is None or refund.status != RefundState.PENDING.value:
            return  # a webhook or an operator settled it meanwhile
        refund.updated_at = utcnow()  # checked: next time after the interval
        if outcome is None or outcome.status is RefundStatus.PENDING:
            return
        try:
            if outcome.status is RefundStatus.SUCCEEDED:
                event = settle_refund(session, payment, refund)
                outbox_ids = [event.id] if event is not None else []
            else:
                outbox_ids = [
                    row.id for row in fail_refund(session, payment, refund, outcome.message)
                ]
        except RefundMismatch as exc:
            log.error("reconcile: refund %s does not fit its payment: %s", refund_id, exc)
            return
        log.info("reconcile: refund %s of payment %s %s", refund_id, payment_id, refund.status)
    publish_now(database, publisher, outbox_ids)


def _alert_stuck_refunds(
    database: Database,
    publisher: EventPublisher,
    settings: Settings,
    now: datetime,
    report: ReconcileReport,
) -> None:
    """One alert (and ``alert.raised`` event) a run for the refunds with no provider
    answer (see :func:`workers.payments.refunds.stuck_refunds`), each listed once and then again
    every ``alert_cooldown_s``: their amounts stay reserved until a webhook or an operator
    settles them."""
    with database.transaction() as session:
        stuck = stuck_refunds(session, now, settings, limit=BATCH)
        if not stuck:
            return
        alert = _stuck_refunds_alert(stuck)
        for refund, _ in stuck:
            refund.alerted_at = now
        event = add_event(session, alert.event())
        session.flush()
        outbox_id = event.id
    report.alerts.append(alert)
    publish_now(database, publisher, [outbox_id])


def _stuck_refunds_alert(stuck: list[tuple[Refund, Payment]]) -> Alert:
    lines = []
    for refund, payment in stuck[:REFUNDS_SHOWN]:
        amount = f"{from_minor(refund.amount_minor, payment.currency)} {payment.currency}"
        again = " (alerted before)" if refund.alerted_at is not None else ""
        lines.append(
            f"- refund {refund.id}: {amount} of payment {payment.id} (order "
            f"{payment.order_id}, {payment.plugin_name or 'provider unknown'}), asked "
            f"{refund.created_at:%Y-%m-%d %H:%M:%S} UTC, {refund.status}{again}"
        )
    if len(stuck) > REFUNDS_SHOWN:
        lines.append(f"- and {len(stuck) - REFUNDS_SHOWN} more")
    return Alert(
        severity="warning",
        title=f"No provider answer recorded for {len(stuck)} refund(s)",
        text=(
            "No provider answer was recorded for these refunds (the caller stopped "
            "mid-call, or the call timed out), so their amounts stay reserved (no second "
            "refund can take them):\n"
            + "\n".join(lines)
            + "\nCheck each at the provider. If it is pending there, wait: its webhook "
            "settles it. If it was processed: `tender refunds settle <refund-id> --succeeded "
            "--provider-refund-id <its id> --reason '...'`. Only if the provider has no such "
            "refund: `tender refunds settle <refund-id> --failed --reason '...'`."
        ),
        tenant_id=stuck[0][1].tenant_id if len({p.tenant_id for _, p in stuck}) == 1 else None,
    )


LATE_CHECKED = ("expired", "not_charged")  # error codes reconcile itself fails payments with


def _due(now: datetime, settings: Settings) -> ColumnElement[bool]:
    """Pending and unknown payments whose next check is due: ``checks`` is a payment's
    place on its schedule, ``updated_at`` the time of its last change or check."""
    due: list[ColumnElement[bool]] = []
    for state, schedule, repeat_last in (
        (PaymentState.UNKNOWN, settings.reconcile_unknown_backoff_s, False),
        (PaymentState.PENDING, settings.reconcile_pending_backoff_s, True),
    ):
        for index, delay_s in enumerate(schedule):
            place = (
                Payment.checks >= index
                if repeat_last and index == len(schedule) - 1
                else Payment.checks == index
            )
            due.append(
                and_(
                    Payment.status == state.value,
                    place,
                    Payment.updated_at < now - timedelta(seconds=delay_s),
                )
            )
    due.append(and_(Payment.status == PaymentState.PENDING.value, Payment.expires_at <= now))
    # One late check of a payment reconcile failed for want of money at the provider (an
    # expired checkout, a charge it had no record of): a success whose webhook was lost
    # still wins. A day after, by default (the pending schedule's last delay).
    due.append(
        and_(
            Payment.status == PaymentState.FAILED.value,
            Payment.error_code.in_(LATE_CHECKED),
            Payment.checks == 0,
            Payment.updated_at < now - timedelta(seconds=settings.reconcile_pending_backoff_s[-1]),
        )
    )
    return or_(*due)


def _expires_at(payment: Payment, plugin: Any) -> datetime:
    """The payment's expiry; rows written before expiries were stored get the plugin's."""
    if payment.expires_at is not None:
        return payment.expires_at
    return payment.created_at + timedelta(seconds=float(plugin.lifetime_s))


def verify_budget_s(settings: Settings) -> float:
    """How long one run may spend verifying: most of an interval, so runs keep their pace."""
    return max(settings.reconcile_interval_s * 0.8, settings.provider_timeout_s)


def _touch(database: Database, ids: list[uuid.UUID], status: str) -> None:
    """Move these payments, if still in ``status``, to the back of the lost-message
    queue, so that payments whose messages wait in a backlog cannot starve the rest."""
    if not ids:
        return
    with database.transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id.in_(ids), Payment.status == status)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def _checked(
    database: Database,
    publisher: EventPublisher,
    settings: Settings,
    payment: Payment,
    provider_id: str | None,
    report: ReconcileReport,
) -> None:
    """A check that left the payment where it was: one step along its schedule, and the
    provider's id kept if the ledger had none. An unknown payment past its last check
    raises one alert naming it and its instance, and is not checked again."""
    checks = payment.checks + 1
    last = payment.status == PaymentState.UNKNOWN.value and checks == len(
        settings.reconcile_unknown_backoff_s
    )
    with database.transaction() as session:
        moved = session.execute(
            update(Payment)
            .where(Payment.id == payment.id, Payment.status == payment.status)
            .values(
                updated_at=utcnow(),
                checks=checks,
                provider_transaction_id=payment.provider_transaction_id or provider_id,
            )
            .execution_options(synchronize_session=False)
        )
        if not last or moved.rowcount != 1:  # type: ignore[attr-defined]
            return
        alert = Alert(
            severity="critical",
            title=f"Payment {payment.id} still unknown after {checks} verifications",
            text=(
                f"Payment {payment.id} (order {payment.order_id}, {payment.amount_minor} "
                f"minor units of {payment.currency}, reference {payment.reference}) at "
                f"{payment.plugin_name} instance {payment.instance_id} could not be "
                f"resolved by {checks} verifications since "
                f"{payment.created_at:%Y-%m-%d %H:%M} UTC, and will not be verified again. "
                "Check it at the provider: a webhook still settles it; otherwise "
                "settle it by hand."
            ),
            instance_id=payment.instance_id,
            tenant_id=payment.tenant_id,
        )
        event = add_event(session, alert.event())
        session.flush()
        outbox_id = event.id
    log.error("reconcile: %s", alert.title)
    report.alerts.append(alert)
    publish_now(database, publisher, [outbox_id])


def _verify_one(
    database: Database,
    registry: PluginRegistry,
    loop: ProviderLoop,
    publisher: EventPublisher,
    settings: Settings,
    payment: Payment,
    report: ReconcileReport,
) -> PaymentState | None:
    current = PaymentState(payment.status)
    instance = next((v for v in registry.snapshot() if v.id == payment.instance_id), None)
    if instance is None:
        log.warning("payment %s is %s but its provider instance is gone", payment.id, current.value)
        _checked(database, publisher, settings, payment, None, report)
        return None
    started = time.perf_counter()
    expired = False
    try:
        plugin = registry.plugin_for(instance)
        expired = current is PaymentState.PENDING and _expires_at(payment, plugin) <= utcnow()
        if expired:
            _end_checkout(loop, settings, plugin, payment)
        # by the provider's own id when the ledger holds one: never a search, never a create
        verify = plugin.verify_payment(
            payment.reference, provider_id=payment.provider_transaction_id
        )
        outcome = loop.run(verify, settings.provider_timeout_s)
    except Exception as exc:
        log.warning("reconcile could not verify payment %s: %s", payment.id, exc)
        if not expired:  # an expired one is tried again next run, until its verify answers
            _checked(database, publisher, settings, payment, None, report)
        return None
    latency_ms = (time.perf_counter() - started) * 1000
    code: str | None
    message: str | None
    if current is PaymentState.FAILED:  # its one late check: only money can move it
        paid = outcome.status is OutcomeStatus.SUCCEEDED and not outcome_mismatch(
            outcome, payment.amount_minor, payment.currency
        )
        if not paid:
            _checked(database, publisher, settings, payment, None, report)
            return None
    open_status = outcome.status in (OutcomeStatus.PENDING, OutcomeStatus.NOT_FOUND)
    if current is PaymentState.PENDING and open_status and not expired:
        # Still waiting on its customer. "Not found" is not "not paid" before the expiry:
        # a hosted page may have no transaction until the first attempt (Flutterwave).
        _checked(database, publisher, settings, payment, outcome.provider_transaction_id, report)
        return None
    if expired and _in_flight(outcome, plugin):
        # Nothing left for the customer to do and the money is on its way (a capture under
        # review, a debit processing): failing it would fail a paid order. Daily checks go
        # on until the provider settles it.
        log.info(
            "payment %s past its expiry is %s at the provider: money in flight, kept pending",
            payment.id,
            outcome.provider_status,
        )
        _checked(database, publisher, settings, payment, outcome.provider_transaction_id, report)
        return None
    if expired and open_status:
        new, code, message = (
            PaymentState.FAILED,
            "expired",
            f"the checkout expired at {_expires_at(payment, plugin):%Y-%m-%d %H:%M} UTC with "
            "no payment at the provider",
        )
    elif outcome.status is OutcomeStatus.NOT_FOUND:
        # Unknown, and old enough that a request in flight would have landed: never charged.
        new, code, message = (
            PaymentState.FAILED,
            "not_charged",
            "the provider has no record of this payment",
        )
    else:
        mismatch = outcome_mismatch(outcome, payment.amount_minor, payment.currency)
        if mismatch is not None:
            log.error("reconcile: payment %s left %s: %s", payment.id, current.value, mismatch)
            _checked(database, publisher, settings, payment, None, report)
            return None
        new = OUTCOME_STATE[outcome.status]
        failed = new is PaymentState.FAILED
        code = (outcome.code or "declined") if failed else None
        message = outcome.message if failed else None
    if new is current:
        _checked(database, publisher, settings, payment, outcome.provider_transaction_id, report)
        return None
    fields: dict[str, Any] = {
        "error_code": code,
        "error_message": message,
        "provider_transaction_id": outcome.provider_transaction_id
        or payment.provider_transaction_id,
        "authorization_url": outcome.authorization_url or payment.authorization_url,
        "next_action": customer_action(outcome) if new is PaymentState.PENDING else None,
        "checks": 0,
    }
    if new is PaymentState.PENDING:  # unknown -> pending: the customer is mid-checkout
        fields["expires_at"] = _expires_at(payment, plugin)
    with database.transaction() as session:
        if not apply_transition(session, payment.id, current, new, **fields):
            return None  # a webhook or another reconcile got there first
        session.add(
            PaymentAttempt(
                payment_id=payment.id,
                instance_id=instance.id,
                plugin_name=instance.plugin_name,
                operation="verify",
                outcome=outcome.status.value,
                error_code=outcome.code,
                message=outcome.message,
                latency_ms=latency_ms,
            )
        )
        late = current is PaymentState.FAILED  # money at the provider wins
        rows = [
            add_event(
                session,
                payment_event(payment, new, previous_status=current if late else None, **fields),
            )
        ]
        if late:
            alert = late_success_alert(payment, instance.plugin_name)
            rows.append(add_event(session, alert))
            log.warning("reconcile: %s", alert.text)
        if new is PaymentState.SUCCEEDED:
            rows += save_from_success(session, payment, outcome.saved_method, registry.box)
        session.flush()
        outbox_ids = [row.id for row in rows]
    publish_now(database, publisher, outbox_ids)
    log.info("reconcile: payment %s %s -> %s", payment.id, current.value, new.value)
    return new


def _in_flight(outcome: PaymentOutcome, plugin: Any) -> bool:
    """A pending outcome in a status the plugin's lifecycle lists as not payable by the
    customer (and not final): the payment is in the provider's hands."""
    if outcome.status is not OutcomeStatus.PENDING or outcome.provider_status is None:
        return False
    return plugin.lifecycle.payable(outcome.provider_status) is False


def _end_checkout(loop: ProviderLoop, settings: Settings, plugin: Any, payment: Payment) -> None:
    """Make an expired checkout unpayable where the provider allows it, before the last
    verify: a customer must not pay a checkout Tender is about to fail. A refusal (it was
    completed or had expired already) is fine: the verify that follows tells which."""
    try:
        ended = loop.run(
            plugin.expire_checkout(payment.reference, provider_id=payment.provider_transaction_id),
            settings.provider_timeout_s,
        )
    except Exception as exc:
        log.info("payment %s: the provider did not expire its checkout: %s", payment.id, exc)
        return
    if ended:
        log.info("payment %s: checkout expired at the provider", payment.id)
