"""Result events: the durable default queue keeps them before any consumer binds, and
``tender events tail`` prints them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kombu import Connection

from tests.integration.conftest import wait_for
from tests.integration.test_payment_path import sandbox, settled
from workers.client import request_payment
from workers.events import DEFAULT_QUEUE

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
