"""RabbitMQ instead of Redis: the same payment path and events over AMQP, with a real
worker process."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from celery import Celery

from tests.conftest import service_missing
from tests.integration.conftest import EventTap, WorkerProcess, wait_for
from tests.integration.test_crash_recovery import new_payment
from workers import runtime
from workers.payments.client import get_payment

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def amqp_env(integration_env: dict[str, str]) -> dict[str, str]:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        service_missing("RabbitMQ at 127.0.0.1:5672", exc)
    return {**integration_env, "TENDER_BROKER_URL": AMQP_URL}


def test_payment_and_event_over_rabbitmq(
    amqp_env: dict[str, str], tenant: str, book_path: str
) -> None:
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path}, tenant_id=tenant, is_active=True
    )
    tap = EventTap(AMQP_URL, binding="payment.*")
    payment = new_payment(tenant, f"amqp-{uuid.uuid4().hex[:6]}")
    worker = WorkerProcess(amqp_env, concurrency=2)
    try:
        sender = Celery("amqp-test-sender", broker=AMQP_URL, set_as_current=False)
        sender.send_task("tender.process_payment", args=[str(payment.id)], queue="payments")
        sender.close()
        view = wait_for(
            lambda: (v := get_payment(payment.id)).status.value == "succeeded" and v, timeout_s=30
        )
        seen = tap.collect(lambda s: any(e["payment_id"] == str(payment.id) for e in s))
    finally:
        output = worker.stop()
        tap.close()
    assert view.amount_minor == 2500, output[-2000:]
    assert [e["type"] for e in seen if e["payment_id"] == str(payment.id)] == ["payment.succeeded"]


def close_every_connection() -> None:
    """What a RabbitMQ restart does to its clients: every connection closed by the node."""
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "closed by the reconnect test"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_a_threads_worker_keeps_taking_payments_after_its_broker_connection_drops(
    amqp_env: dict[str, str], tenant: str, book_path: str
) -> None:
    """Issue 32's stuck payment: a worker whose connection dropped while payments were in
    flight reconnected and then hung (Celery's prefetch restore sent basic.qos from pool
    threads that finished those payments, against the consumer thread on the same AMQP
    connection), leaving the payments the broker kept handing it `requested` forever."""
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, "latency_ms": 1500}, tenant_id=tenant, is_active=True
    )
    worker = WorkerProcess(amqp_env, concurrency=16, pool="threads")
    sender = Celery("amqp-reconnect-sender", broker=AMQP_URL, set_as_current=False)
    try:
        in_flight = [new_payment(tenant, f"drop-{uuid.uuid4().hex[:8]}") for _ in range(16)]
        for payment in in_flight:
            sender.send_task("tender.process_payment", args=[str(payment.id)], queue="payments")
        wait_for(
            lambda: all(get_payment(p.id).status.value == "processing" for p in in_flight),
            timeout_s=30,
        )
        close_every_connection()
        after = [new_payment(tenant, f"after-{uuid.uuid4().hex[:8]}") for _ in range(32)]
        for payment in after:
            for _ in range(3):  # the sender's own connection was closed too
                try:
                    sender.send_task(
                        "tender.process_payment", args=[str(payment.id)], queue="payments"
                    )
                    break
                except Exception:
                    sender.pool.force_close_all()
        wait_for(
            lambda: all(get_payment(p.id).status.value == "succeeded" for p in in_flight + after),
            timeout_s=60,
            interval_s=0.2,
        )
    finally:
        sender.close()
        output = worker.stop()
    assert "Traceback" not in output or "Couldn't ack" in output, output[-3000:]
