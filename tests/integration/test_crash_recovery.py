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

from providers.sandbox import charge_book
from registry.db import get_database
from tests.integration.conftest import WorkerProcess, redis_db_url, wait_for
from workers import runtime
from workers.client import _validated, get_payment, record_payment


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
def test_sigkilled_worker_charges_once_and_completes(
    crash_env: dict[str, str], tenant: str, book_path: str, phase: str, config: dict[str, Any]
) -> None:
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, **config}, tenant_id=tenant, is_active=True
    )
    payment = new_payment(tenant, f"crash-{phase}")
    _books[payment.id] = book_path
    worker = WorkerProcess(crash_env, concurrency=1)
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


def test_warm_shutdown_gives_back_the_payments_a_worker_reserved(
    crash_env: dict[str, str], tenant: str, book_path: str
) -> None:
    """A pool of one thread reserves two payment messages (two per thread): one runs, one
    waits. A warm shutdown lets the running payment finish and returns the waiting one
    to the queue, unclaimed, and the next worker charges it once."""
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, "latency_ms": 1500}, tenant_id=tenant, is_active=True
    )
    payments = [new_payment(tenant, f"warm-{i}") for i in range(2)]
    broker = crash_env["TENDER_BROKER_URL"]
    queue = redis.Redis.from_url(broker)
    worker = WorkerProcess(crash_env, concurrency=1, pool="threads")
    try:
        for payment in payments:
            send_process_payment(broker, payment.id)
        # both messages are with the worker (unacked), none left in the queue
        wait_for(lambda: queue.hlen("unacked") == 2 and queue.llen("payments") == 0)
        wait_for(lambda: any(get_payment(p.id).status.value == "processing" for p in payments))
    finally:
        output = worker.stop()  # SIGTERM: warm shutdown
    states = sorted(get_payment(p.id).status.value for p in payments)
    assert states == ["requested", "succeeded"], output[-3000:]
    assert queue.llen("payments") == 1  # the reserved message is back, not lost
    successor = WorkerProcess(crash_env, concurrency=1, pool="threads")
    try:
        wait_for(
            lambda: all(get_payment(p.id).status.value == "succeeded" for p in payments),
            timeout_s=30,
        )
    finally:
        output = successor.stop()
    book = charge_book(book_path)
    assert book.count() == 2, output[-3000:]
    assert book.refused_repeats() == 0
