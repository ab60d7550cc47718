"""Paystack webhooks against real payments (worker, PostgreSQL, Redis): forged, missing and
replayed deliveries change nothing, and concurrent redeliveries apply exactly once."""

# ruff: noqa: F811 - tests take the imported ``fake_paystack`` fixture as an argument

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from tests.fakes.paystack import FakePaystack, sign
from tests.integration.conftest import EventTap
from tests.integration.test_paystack_e2e import (
    fake_paystack,  # noqa: F401 - the fixture
    outbox_of,
    pay,
    paystack_instance,
    receipts_of,
    wait_status,
)
from workers.payments.client import PaymentReceipt, get_payment


@pytest.fixture
def api(integration_env: dict[str, str]) -> Iterator[TestClient]:
    from surfaces.http.app import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture
def checkout(worker, tenant, fake_paystack: FakePaystack) -> PaymentReceipt:
    """A checkout awaiting its customer (pending), whom Paystack has since charged."""
    paystack_instance(fake_paystack, tenant)
    receipt = pay(tenant)
    wait_status(receipt.payment_id, "pending")
    fake_paystack.set_status(receipt.reference, "success")
    return receipt


def snapshot(receipt: PaymentReceipt) -> tuple[str, list[str], list[str]]:
    """What a webhook could change: state, the payment's events, the receipts."""
    return (
        get_payment(receipt.payment_id).status.value,
        outbox_of(receipt.payment_id),
        receipts_of(receipt.reference),
    )


def test_forged_and_missing_signatures_change_nothing(
    api: TestClient, checkout: PaymentReceipt, fake_paystack: FakePaystack
) -> None:
    body, headers = fake_paystack.webhook(
        "charge.success", fake_paystack.event_data("charge.success", checkout.reference)
    )
    before = snapshot(checkout)
    assert before == ("pending", ["payment.pending"], [])

    forged = {**headers, "x-paystack-signature": sign("sk_test_attacker", body)}
    missing = {k: v for k, v in headers.items() if k != "x-paystack-signature"}
    tampered = body.replace(b'"status":"success"', b'"status":"success" ')
    for sent, sent_headers in ((body, forged), (body, missing), (tampered, headers)):
        answer = api.post("/webhooks/paystack", content=sent, headers=sent_headers)
        assert answer.status_code == 401, answer.text

    assert snapshot(checkout) == before


def test_replayed_webhook_changes_nothing(
    api: TestClient, checkout: PaymentReceipt, fake_paystack: FakePaystack, events: EventTap
) -> None:
    body, headers = fake_paystack.webhook(
        "charge.success", fake_paystack.event_data("charge.success", checkout.reference)
    )
    first = api.post("/webhooks/paystack", content=body, headers=headers)
    assert first.status_code == 200 and first.json()["result"] == "applied"
    after_first = snapshot(checkout)
    assert after_first == ("succeeded", ["payment.pending", "payment.succeeded"], ["applied"])

    for _ in range(3):
        replay = api.post("/webhooks/paystack", content=body, headers=headers)
        assert replay.status_code == 200 and replay.json()["result"] == "duplicate"

    assert snapshot(checkout) == after_first


def test_concurrent_redeliveries_apply_once(
    api: TestClient, checkout: PaymentReceipt, fake_paystack: FakePaystack
) -> None:
    body, headers = fake_paystack.webhook(
        "charge.success", fake_paystack.event_data("charge.success", checkout.reference)
    )

    def deliver(_: int) -> str:
        answer = api.post("/webhooks/paystack", content=body, headers=headers)
        assert answer.status_code == 200
        return str(answer.json()["result"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(deliver, range(6)))

    assert sorted(results) == ["applied"] + ["duplicate"] * 5
    assert snapshot(checkout) == (
        "succeeded",
        ["payment.pending", "payment.succeeded"],
        ["applied"],
    )


def test_amount_mismatch_is_not_marked_succeeded(
    api: TestClient, checkout: PaymentReceipt, fake_paystack: FakePaystack
) -> None:
    data = fake_paystack.event_data("charge.success", checkout.reference)
    data["amount"] = data["amount"] // 100  # paid in naira, not kobo
    body, headers = fake_paystack.webhook("charge.success", data)

    answer = api.post("/webhooks/paystack", content=body, headers=headers)

    assert answer.status_code == 200 and answer.json()["result"] == "mismatch"
    assert snapshot(checkout) == ("pending", ["payment.pending"], ["mismatch"])


def test_unknown_reference_is_acknowledged(
    api: TestClient, checkout: PaymentReceipt, fake_paystack: FakePaystack
) -> None:
    data = fake_paystack.event_data("charge.success", checkout.reference)
    data["reference"] = "tdr-from-another-system"
    body, headers = fake_paystack.webhook("charge.success", data)

    answer = api.post("/webhooks/paystack", content=body, headers=headers)

    assert answer.status_code == 200 and answer.json()["result"] == "unknown_reference"
    assert receipts_of("tdr-from-another-system") == ["unknown_reference"]
    assert snapshot(checkout) == ("pending", ["payment.pending"], [])
