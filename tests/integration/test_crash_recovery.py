"""A worker process killed with SIGKILL mid-payment never charges twice and never
loses the payment. Runs a real prefork ``celery worker`` OS process on its own Redis
database, so the test's embedded worker cannot take the message instead."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from config.settings import get_settings, reset_settings
from providers.sandbox import charge_book
from registry.db import get_database
from registry.migrate import upgrade
from tests.conftest import drop_postgres_schema, fresh_postgres_schema
from tests.integration.conftest import WorkerProcess, redis_db_url, use_new_database, wait_for
from workers import runtime
from workers.core.app import app
from workers.events.relay import EventPublisher
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.reconcile import reconcile


@pytest.fixture
def crash_env(integration_env: dict[str, str]) -> Iterator[dict[str, str]]:
    broker = redis_db_url(1)
    redis.Redis.from_url(broker).flushdb()
    yield {**integration_env, "TENDER_BROKER_URL": broker, "TENDER_PAYMENT_LEASE_S": "3"}


def send_process_payment(broker: str, payment_id: uuid.UUID) -> None:
    sender = Celery("crash-test-sender", broker=broker, set_as_current=False)
    sender.send_task("tender.process_payment", args=[str(payment_id)], queue="payments")
    sender.close()


def new_payment(tenant: str, order_id: str) -> Any:
    fields = _validated(order_id, "25.00", "NGN", "ada@example.com", "card", None, tenant, None)
    payment, _ = record_payment(get_database(), fields)
    return payment


def kill_child_while(worker: WorkerProcess, payment_id: uuid.UUID, *, phase: str) -> None:
    wait_for(lambda: get_payment(payment_id).status.value == "processing", timeout_s=30)
    children = wait_for(worker.children, timeout_s=10)
    if phase == "after-charge":
        wait_for(lambda: charge_book_of(payment_id).count() == 1, timeout_s=10, interval_s=0.01)
    os.kill(children[0], signal.SIGKILL)


def a_successor_charges_each_once(env: dict[str, str], payments: list[Any], book_path: str) -> None:
    """A new worker finishes every one of ``payments``, charging each exactly once."""
    successor = WorkerProcess(env, concurrency=1, pool="threads")
    try:
        wait_for(
            lambda: all(get_payment(p.id).status.value == "succeeded" for p in payments),
            timeout_s=30,
        )
    finally:
        output = successor.stop()
    book = charge_book(book_path)
    assert book.count() == len(payments), output[-3000:]
    assert book.refused_repeats() == 0


_books: dict[uuid.UUID, str] = {}


def charge_book_of(payment_id: uuid.UUID) -> Any:
    return charge_book(_books[payment_id])


@pytest.mark.parametrize(
    ("phase", "config"),
    [
        # killed while the provider is still deciding: nothing charged yet
        ("before-charge", {"latency_ms": 1500}),
        # killed after the provider charged but before it answered
        ("after-charge", {"response_delay_ms": 1500}),
    ],
)
@pytest.mark.parametrize("ack_emulation", [True, False])
def test_sigkilled_worker_charges_once_and_completes(
    crash_env: dict[str, str],
    tenant: str,
    book_path: str,
    phase: str,
    config: dict[str, Any],
    ack_emulation: bool,
) -> None:
    """The pool's child dies; its parent gives the message back (reject_on_worker_lost),
    with or without Redis's ack emulation, and the next child finishes the payment."""
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, **config}, tenant_id=tenant, is_active=True
    )
    payment = new_payment(tenant, f"crash-{phase}")
    _books[payment.id] = book_path
    env = crash_env | {"TENDER_WORKER_REDIS_ACK_EMULATION": str(ack_emulation).lower()}
    worker = WorkerProcess(env, concurrency=1)
    try:
        send_process_payment(crash_env["TENDER_BROKER_URL"], payment.id)
        kill_child_while(worker, payment.id, phase=phase)
        view = wait_for(
            lambda: (
                (v := get_payment(payment.id)).status.value in {"succeeded", "failed", "unknown"}
                and v
            ),
            timeout_s=45,
        )
    finally:
        output = worker.stop()
    assert view.status.value == "succeeded", output[-3000:]
    book = charge_book(book_path)
    assert book.count() == 1
    assert book.refused_repeats() == 0
    if phase == "after-charge":
        # the successor verified first and found the charge: no second charge call
        assert [a.operation for a in view.attempts] == ["verify"]


@pytest.mark.parametrize("ack_emulation", [True, False])
def test_warm_shutdown_gives_back_the_payments_a_worker_reserved(
    crash_env: dict[str, str], tenant: str, book_path: str, ack_emulation: bool
) -> None:
    """A pool of one thread reserves two payment messages (two per thread): one runs, one
    waits. A warm shutdown lets the running payment finish and returns the waiting one
    to the queue, unclaimed, and the next worker charges it once. With Redis's ack
    emulation off the worker holds its reserved messages only in memory, and still gives
    them back."""
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, "latency_ms": 1500}, tenant_id=tenant, is_active=True
    )
    payments = [new_payment(tenant, f"warm-{i}") for i in range(2)]
    broker = crash_env["TENDER_BROKER_URL"]
    queue = redis.Redis.from_url(broker)
    env = crash_env | {"TENDER_WORKER_REDIS_ACK_EMULATION": str(ack_emulation).lower()}
    # Payments only: the requeue sweep a worker asks for on connecting (maintenance queue)
    # would take one of its two reservations and change which messages it holds.
    worker = WorkerProcess(env, concurrency=1, pool="threads", queues="payments")
    try:
        for payment in payments:
            send_process_payment(broker, payment.id)
        # both messages are with the worker, none left in the queue; Redis keeps unacked
        # copies of them only under ack emulation
        unacked = 2 if ack_emulation else 0
        wait_for(lambda: queue.llen("payments") == 0 and queue.hlen("unacked") == unacked)
        wait_for(lambda: any(get_payment(p.id).status.value == "processing" for p in payments))
    finally:
        output = worker.stop()  # SIGTERM: warm shutdown
    states = sorted(get_payment(p.id).status.value for p in payments)
    assert states == ["requested", "succeeded"], output[-3000:]
    assert queue.llen("payments") == 1  # the reserved message is back, not lost
    a_successor_charges_each_once(crash_env, payments, book_path)


class _Recording(EventPublisher):
    def __init__(self) -> None:
        super().__init__(app)
        self.published: list[Any] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)


@pytest.fixture
def own_schema(
    crash_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """``crash_env`` on a PostgreSQL schema of the test's own, so that a reconcile pass
    sees this test's payments only, not what earlier tests of the session left."""
    url = fresh_postgres_schema()
    upgrade(url)
    monkeypatch.setenv("TENDER_DATABASE_URL", url)
    use_new_database()  # the broker stays: the embedded worker keeps consuming
    try:
        yield crash_env | {"TENDER_DATABASE_URL": url}
    finally:
        monkeypatch.setenv("TENDER_DATABASE_URL", crash_env["TENDER_DATABASE_URL"])
        monkeypatch.delenv("TENDER_RECONCILE_AGE_S", raising=False)
        use_new_database()
        drop_postgres_schema(url)


def test_a_killed_worker_without_ack_emulation_loses_messages_not_payments(
    own_schema: dict[str, str], tenant: str, book_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis's ack emulation off: the worker takes its two messages off the queue and
    keeps no copy in Redis, so when the whole worker process is killed (SIGKILL, no
    warm shutdown) the messages are gone. The payments are not: the ledger still has one
    ``processing`` under an expiring lease and one ``requested``, a reconcile pass finds
    both and enqueues them again, and the next worker charges each exactly once."""
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, "latency_ms": 1500}, tenant_id=tenant, is_active=True
    )
    payments = [new_payment(tenant, f"lost-{i}") for i in range(2)]
    ids = {p.id for p in payments}
    broker = own_schema["TENDER_BROKER_URL"]
    queue = redis.Redis.from_url(broker)
    env = own_schema | {"TENDER_WORKER_REDIS_ACK_EMULATION": "false"}
    worker = WorkerProcess(env, concurrency=1, pool="threads", queues="payments")  # as above
    try:
        for payment in payments:
            send_process_payment(broker, payment.id)
        wait_for(lambda: queue.llen("payments") == 0)
        wait_for(lambda: any(get_payment(p.id).status.value == "processing" for p in payments))
        worker.process.kill()
        worker.process.wait(timeout=10)
    finally:
        output = worker.stop()
    assert queue.llen("payments") == 0 and queue.hlen("unacked") == 0  # both messages lost
    states = sorted(get_payment(p.id).status.value for p in payments)
    assert states == ["processing", "requested"], output[-3000:]

    monkeypatch.setenv("TENDER_RECONCILE_AGE_S", "0.5")
    reset_settings()
    found: set[uuid.UUID] = set()
    publisher = _Recording()

    def reenqueue(payment_id: uuid.UUID) -> bool:
        send_process_payment(broker, payment_id)
        return True

    def reconciled_both() -> bool:  # the processing one waits for its 3 s lease to expire
        report = reconcile(
            get_database(),
            runtime.registry(),
            runtime.provider_loop(),
            publisher,
            get_settings(),
            reenqueue,
        )
        found.update(report.reenqueued)
        return found >= ids

    wait_for(reconciled_both, timeout_s=15, interval_s=0.5)
    assert found == ids and publisher.published == []  # nothing else to do in this schema
    a_successor_charges_each_once(own_schema, payments, book_path)
