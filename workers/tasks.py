"""Celery tasks: thin wiring from messages to the modules that do the work."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task
from sqlalchemy.exc import OperationalError

from config.celery import PROCESS_PAYMENT, REQUEUE_LOST
from config.settings import get_settings
from registry.db import get_database
from workers import runtime
from workers.core.app import app
from workers.core.locks import hold
from workers.events.relay import EventPublisher, relay_outbox
from workers.payments.processor import Busy, PaymentProcessor, RouteHint

log = logging.getLogger(__name__)


def publisher() -> EventPublisher:
    return EventPublisher(app)


def processor() -> PaymentProcessor:
    from workers.monitoring.health import record_live_failure

    return PaymentProcessor(
        get_database(),
        runtime.registry(),
        runtime.provider_loop(),
        runtime.event_relay(),
        get_settings(),
        on_unavailable=record_live_failure,
        writer=runtime.ledger_writer(),
        leases=runtime.lease_keeper(),
    )


@app.task(
    name=PROCESS_PAYMENT,
    bind=True,
    max_retries=None,
    acks_late=True,
    reject_on_worker_lost=True,
)
def process_payment_task(
    self: Task,
    payment_id: str,
    tenant_id: str | None = None,
    currency: str | None = None,
    idempotency_key: str | None = None,
    pinned_instance_id: str | None = None,
) -> str | None:
    """Charge one payment at most once; see workers.payments.processor.

    The routing facts (tenant, currency, key) ride in the message so the worker can claim
    and record the first hop in one statement; without them it reads the row first.
    """
    pinned = uuid.UUID(pinned_instance_id) if pinned_instance_id else None
    hint = (
        RouteHint(tenant_id, currency, idempotency_key, pinned)
        if currency and idempotency_key
        else None
    )
    try:
        result = processor().process(uuid.UUID(payment_id), hint)
    except OperationalError as exc:
        # The database went away (a dropped connection, a failover). The claim's lease
        # makes a retry safe: it waits out the lease and verifies before charging.
        log.warning("payment %s: database unavailable (%s); retrying", payment_id, exc.orig)
        raise self.retry(countdown=2.0, max_retries=30) from None
    runtime.close_retired_plugins()
    if isinstance(result, Busy):
        raise self.retry(countdown=result.retry_in_s)
    return result.state.value if result.state else None


@app.task(name="tender.relay_outbox")
def relay_outbox_task() -> int:
    """Sweep events the inline publish missed (older than 2 s)."""
    database = get_database()
    with hold(database, "relay_outbox") as held:
        if not held:
            return 0
        return relay_outbox(database, publisher(), older_than_s=2.0)


@app.task(name=REQUEUE_LOST)
def requeue_lost_task() -> int:
    """Enqueue again what the broker lost (see workers.payments.reconcile.requeue_lost)."""
    from workers.payments.client import enqueue_payment
    from workers.payments.reconcile import requeue_lost

    settings = get_settings()
    database = get_database()
    try:
        with hold(database, "requeue_lost") as held:
            if not held:
                return 0
            return len(requeue_lost(database, settings, enqueue_payment))
    except OperationalError as exc:  # the database is away: the next sweep tries again
        log.warning("requeue sweep skipped: database unavailable (%s)", type(exc.orig).__name__)
        return 0


@app.task(name="tender.reconcile")
def reconcile_task() -> dict[str, Any]:
    from workers.payments.client import enqueue_payment
    from workers.payments.reconcile import reconcile

    settings = get_settings()
    database = get_database()
    with hold(database, "reconcile") as held:
        if not held:
            return {"skipped": "another reconcile is running"}
        report = reconcile(
            database,
            runtime.registry(),
            runtime.provider_loop(),
            publisher(),
            settings,
            enqueue_payment,
        )
    if report.alerts:
        from workers.monitoring import alerts

        alerts.deliver_all(report.alerts, alerts.sinks_from_settings(settings), settings)
    return {
        "reenqueued": len(report.reenqueued),
        "resolved": len(report.resolved),
        "still_open": len(report.still_open),
        "refund_alerts": len(report.alerts),
    }


@app.task(name="tender.health_check_all")
def health_check_all_task() -> dict[str, Any]:
    from workers.monitoring.health import health_check_all

    return health_check_all()


@app.task(name="tender.check_experiments")
def check_experiments_task() -> int:
    """Every running A/B experiment's guardrail (workers.payments.experiments)."""
    from workers.payments.experiments import check_all_guardrails

    database = get_database()
    with hold(database, "check_experiments") as held:
        if not held:
            return 0
        return check_all_guardrails(database)
