"""Result events: the durable default queue keeps them before any consumer binds, and
``tender events tail`` prints them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from tests.integration.conftest import wait_for
from tests.integration.test_payment_path import sandbox, settled
from workers.events.relay import EventPublisher
from workers.ledger.outbox import DEFAULT_QUEUE
from workers.payments.client import request_payment

TENDER = shutil.which("tender") or str(Path(sys.executable).with_name("tender"))


def test_default_queue_holds_events_for_late_consumers(
    worker, tenant, book_path, integration_env
) -> None:  # type: ignore[no-untyped-def]
    sandbox(tenant, book_path, name="primary")
    receipt = request_payment("ev-1", "2", "NGN", "ada@example.com", tenant_id=tenant)
    wait_for(lambda: settled(receipt.payment_id))
    found = None
    with (
        Connection(integration_env["TENDER_BROKER_URL"]) as conn,
        conn.SimpleQueue(DEFAULT_QUEUE) as queue,
    ):
        deadline = time.monotonic() + 10
        while found is None and time.monotonic() < deadline:
            try:
                message = queue.get(timeout=1)
            except queue.Empty:
                continue
            message.ack()
            if message.payload.get("payment_id") == str(receipt.payment_id):
                found = message.payload
    assert found is not None and found["type"] == "payment.succeeded"


def test_events_tail_prints_json_lines(worker, tenant, book_path, integration_env) -> None:  # type: ignore[no-untyped-def]
    sandbox(tenant, book_path, name="primary")
    tail = subprocess.Popen(
        [TENDER, "events", "tail", "--binding", "payment.*", "--timeout", "15"],
        env={**os.environ, **integration_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # let the tail bind its queue
        receipt = request_payment("ev-2", "2", "NGN", "ada@example.com", tenant_id=tenant)
        wait_for(lambda: settled(receipt.payment_id))
        out, errors = tail.communicate(timeout=30)
    finally:
        tail.kill()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(
        e["payment_id"] == str(receipt.payment_id) and e["type"] == "payment.succeeded"
        for e in lines
    ), errors


@contextmanager
def clients_built_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the ``redis.Redis`` objects this thread builds inside the block (an
    in-process worker of the session may be building its own meanwhile)."""
    built: list[int] = []
    original = redis.Redis.__init__
    me = threading.get_ident()

    def counting(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        if threading.get_ident() == me:
            built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    try:
        yield built
    finally:
        monkeypatch.undo()


def test_lone_publishes_reuse_one_redis_client(
    integration_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's Redis channel builds a ``redis.Redis`` for every command (two a publish),
    each filling ~170 response callbacks; the publisher gives its channel one client."""
    publisher = EventPublisher(Celery("one-client", broker=integration_env["TENDER_BROKER_URL"]))
    ids = [str(uuid.uuid4()) for _ in range(4)]

    def publish(event_id: str) -> None:
        publisher.publish(
            [("payment.succeeded", {"event_id": event_id, "type": "payment.succeeded"})]
        )

    publish(ids[0])  # declares, and builds the channel's one client
    with clients_built_here(monkeypatch) as built:
        for event_id in ids[1:]:
            publish(event_id)
    assert built == []

    seen: set[str] = set()  # and every event reached the default queue
    with (
        Connection(integration_env["TENDER_BROKER_URL"]) as conn,
        conn.SimpleQueue(DEFAULT_QUEUE) as queue,
    ):
        deadline = time.monotonic() + 10
        while not set(ids) <= seen and time.monotonic() < deadline:
            try:
                message = queue.get(timeout=1)
            except queue.Empty:
                continue
            message.ack()
            seen.add(message.payload.get("event_id"))
    assert set(ids) <= seen


_CLIENT_SCRIPT = """
import json, threading, uuid
import redis
from celery.signals import before_task_publish
from workers.payments.client import request_payment

sent = []
before_task_publish.connect(lambda **s: sent.append(dict(s.get("headers") or {})), weak=False)
request_payment(f"rc-{uuid.uuid4()}", "2", "NGN", "ada@example.com")  # warm
built = []
original = redis.Redis.__init__
def counting(self, *args, **kwargs):
    built.append(1)
    original(self, *args, **kwargs)
redis.Redis.__init__ = counting
receipts = [
    request_payment(f"rc-{uuid.uuid4()}", "2", "NGN", "ada@example.com", tenant_id="t-rc")
    for _ in range(3)
]
last = receipts[-1]
print(json.dumps({
    "built": len(built),
    "enqueued": all(r.enqueued for r in receipts),
    "argsrepr": sent[-1]["argsrepr"],
    "kwargsrepr": sent[-1]["kwargsrepr"],
    "expected_args": repr([str(last.payment_id)]),
    "expected_kwargs": repr(
        {"tenant_id": "t-rc", "currency": "NGN", "idempotency_key": last.idempotency_key}
    ),
}))
"""


def test_request_payment_reuses_one_redis_client_and_names_its_arguments(
    integration_env: dict[str, str],
) -> None:
    """A client process builds no Redis client per request (kombu would build one per
    publish), and the task message still shows its arguments as Celery would. In a
    process of its own: in this one the worker's relay shares the producer pool."""
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["built"] == 0
    assert report["enqueued"]
    assert report["argsrepr"] == report["expected_args"]
    assert report["kwargsrepr"] == report["expected_kwargs"]


def test_events_routed_by_tenant_reach_only_that_tenants_binding(
    integration_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TENDER_EVENT_ROUTING=tenant (issue 36): an event's routing key starts with its
    tenant, so a consumer bound to 't-a.#' gets tenant A's events and never B's, through
    the real broker."""
    from kombu import Queue

    from config.settings import reset_settings
    from workers.events.relay import events_exchange

    monkeypatch.setenv("TENDER_EVENT_ROUTING", "tenant")
    reset_settings()
    try:
        publisher = EventPublisher(Celery("by-tenant", broker=integration_env["TENDER_BROKER_URL"]))
        name = f"tender.test.tenant.{uuid.uuid4().hex[:8]}"
        with Connection(integration_env["TENDER_BROKER_URL"]) as conn:
            queue = Queue(name, events_exchange, routing_key="t-a.#", durable=False)
            queue(conn.default_channel).declare()
            marker = uuid.uuid4().hex
            publisher.publish(
                [
                    ("payment.succeeded", {"event_id": f"a-{marker}", "tenant_id": "t-a"}),
                    ("payment.succeeded", {"event_id": f"b-{marker}", "tenant_id": "t-b"}),
                    ("alert.raised", {"event_id": f"p-{marker}", "tenant_id": None}),
                ]
            )
            seen = []
            with conn.SimpleQueue(queue) as simple:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    try:
                        message = simple.get(timeout=0.5)
                    except simple.Empty:
                        if seen:
                            break
                        continue
                    message.ack()
                    seen.append(message.payload["event_id"])
            queue(conn.default_channel).delete()
        assert seen == [f"a-{marker}"]
    finally:
        reset_settings()
