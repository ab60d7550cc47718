"""Result events: the durable default queue keeps them before any consumer binds, and
``tender events tail`` prints them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from tests.integration.conftest import wait_for
from tests.integration.test_payment_path import sandbox, settled
from workers.client import request_payment
from workers.events import DEFAULT_QUEUE
from workers.relay import EventPublisher

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
    built: list[int] = []
    original = redis.Redis.__init__

    def counting(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    for event_id in ids[1:]:
        publish(event_id)
    monkeypatch.undo()
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
