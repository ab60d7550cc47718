"""Metrics and logs through the real services: payments requested over the HTTP API (its
own uvicorn process) and charged by the session's real worker, then both ``/metrics``
scraped over HTTP and read with Prometheus's own text parser. A canary key held by the
instance appears in no log line of the run, the worker's or the API's."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from providers.sandbox import SIGNATURE_HEADER, SandboxProvider
from tests.integration.conftest import wait_for
from tests.integration.test_api_limits import free_port
from tests.integration.test_paystack_e2e import wait_status
from workers import runtime
from workers.core import metrics

pytestmark = pytest.mark.integration

TOKEN = f"metrics-{uuid.uuid4().hex}"
CANARY = "sk_canary_metrics_run_0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(integration_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("api-logs") / "api.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENDER_")}
    env |= integration_env | {"TENDER_API_TOKEN": TOKEN, "TENDER_LOG_LEVEL": "DEBUG"}
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("tender")), "api", "--port", str(port)],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            wait_for(lambda: _answers(client), timeout_s=30)
            client.log_path = log_path  # type: ignore[attr-defined]
            yield client
        finally:
            client.close()
            process.terminate()
            process.wait(timeout=10)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, headers=headers).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_both_metrics_endpoints_count_a_run_and_no_log_line_shows_the_key(
    api: Any, worker: Any, tenant: str, book_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    assert metrics.serve(port, "127.0.0.1")  # what a real worker does on worker_ready
    worker_metrics = f"http://127.0.0.1:{port}/metrics"
    made = runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path, "api_key": CANARY},
        tenant_id=tenant, display_name=f"Sandbox {tenant}", is_active=True,
    )  # fmt: skip
    name = made.metric_label  # display name and short id: names need not be unique
    labels = (("instance", name), ("outcome", "succeeded"), ("provider", "sandbox"))
    finished = ("tender_payments_finished_total", labels)
    before = scrape(worker_metrics)

    ids = []
    for n in range(5):
        created = api.post(
            "/payments",
            json={"order_id": f"m-{n}", "amount": "15.00", "currency": "NGN",
                  "customer_email": "ada@example.com", "tenant_id": tenant},
        )  # fmt: skip
        assert created.status_code in (200, 201, 202), created.text
        ids.append(created.json()["payment_id"])
    views = [wait_status(pid, "succeeded") for pid in ids]

    after = scrape(worker_metrics)
    assert after[finished] - before.get(finished, 0.0) == 5
    started = ("tender_payments_started_total", (("instance", name), ("provider", "sandbox")))
    assert after[started] - before.get(started, 0.0) == 5
    calls = (
        "tender_provider_call_seconds_count",
        (("operation", "charge"), ("provider", "sandbox")),
    )
    assert after[calls] - before.get(calls, 0.0) >= 5
    assert not any(str(pid) in str(key) for key in after for pid in ids)  # never an id label

    # A signed webhook about the first payment, through the API.
    body = json.dumps(
        {"id": f"evt-{uuid.uuid4().hex}", "type": "charge.success",
         "reference": views[0].provider_reference, "status": "succeeded",
         "amount_minor": 1500, "currency": "NGN"}
    ).encode()  # fmt: skip
    signer = SandboxProvider()
    signer.configure({"api_key": CANARY})
    answer = api.post(
        "/webhooks/sandbox", content=body, headers={SIGNATURE_HEADER: signer.sign(body)}
    )
    assert answer.status_code == 200, answer.text
    assert (
        api.post(
            "/webhooks/sandbox", content=body, headers={SIGNATURE_HEADER: "0" * 64}
        ).status_code
        == 401
    )

    state = scrape(f"{api.base_url!s}/metrics", Authorization=f"Bearer {TOKEN}")
    webhook = (
        "tender_webhooks_received_total",
        (("provider", "sandbox"), ("result", answer.json()["result"])),
    )
    assert state[webhook] == 1
    assert (
        state[
            (
                "tender_webhooks_received_total",
                (("provider", "sandbox"), ("result", "bad_signature")),
            )
        ]
        == 1
    )
    assert state[("tender_instance_health", (("instance", name), ("provider", "sandbox")))] == -1.0
    assert ("tender_payments_open", (("state", "unknown"),)) in state
    assert ("tender_outbox_unpublished", ()) in state
    assert httpx.get(f"{api.base_url!s}/metrics").status_code == 401  # read scope

    logged = caplog.text + api.log_path.read_text()
    assert logged and CANARY not in logged
