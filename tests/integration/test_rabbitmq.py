"""RabbitMQ instead of Redis: the same payment path and events over AMQP, with a real
worker process."""

from __future__ import annotations

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
