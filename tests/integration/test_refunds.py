"""Refunds through the payment's own Paystack instance (real SDK, fake Paystack), on
PostgreSQL: full and partial, queued refunds settled by their webhook, and the guards
against refunding more than was charged, even when refunds race."""

# ruff: noqa: F811 - tests take the imported ``fake_paystack`` fixture as an argument

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from providers.money import NonPositiveAmount, TooManyDecimalPlaces
from tests.fakes.paystack import FakePaystack
from tests.integration.conftest import EventTap
from tests.integration.test_paystack_e2e import (
    charged_payment,
    events_of,
    fake_paystack,  # noqa: F401 - the fixture
    outbox_of,
    pay,
    paystack_instance,
    wait_status,
)
from workers.payments.client import get_payment
from workers.payments.refunds import RefundRefused, RefundView, list_refunds, refund_payment


@pytest.fixture
def api(integration_env: dict[str, str]) -> Iterator[TestClient]:
    from surfaces.http.app import create_app

    with TestClient(create_app()) as client:
        yield client


def webhook(api: TestClient, fake: FakePaystack, event: str, reference: str) -> str:
    body, headers = fake.webhook(event, fake.event_data(event, reference))
    answer = api.post("/webhooks/paystack", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["result"])


def test_full_refund_processed_at_once(
    worker, tenant, fake_paystack: FakePaystack, events: EventTap
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant, amount="5000")
    fake_paystack.refund_status = "processed"

    refund = refund_payment(payment.id)

    assert refund.status == "succeeded" and refund.amount == Decimal("5000.00")
    assert refund.provider_refund_id is not None
    assert (refund.payment_status, refund.refunded_minor) == ("refunded", 500_000)
    assert fake_paystack.refunded_minor(payment.provider_reference) == 500_000
    view = get_payment(payment.id)
    assert view.status == "refunded" and view.refunded_minor == 500_000
    assert [(a.operation, a.outcome) for a in view.attempts][-1] == ("refund", "succeeded")
    assert events_of(events, payment.id, 2) == ["payment.succeeded", "payment.refunded"]
    refunded_event = events.seen[-1]
    assert refunded_event["status"] == "refunded" and refunded_event["refunded_minor"] == 500_000


def test_partial_refunds_queued_then_settled_by_webhook(
    worker, tenant, fake_paystack: FakePaystack, api: TestClient, events: EventTap
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant, amount="100")
    reference = payment.provider_reference

    first = refund_payment(payment.id, Decimal("30.00"))
    assert first.status == "pending" and first.payment_status == "succeeded"
    assert get_payment(payment.id).refunded_minor == 0  # not refunded until Paystack says so

    assert webhook(api, fake_paystack, "refund.processed", reference) == "applied"
    view = get_payment(payment.id)
    assert (view.status, view.refunded_minor) == ("partially_refunded", 3_000)

    rest = api.post(f"/payments/{payment.id}/refunds")  # no body: everything left
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount_minor"] == 7_000 and rest.json()["status"] == "pending"
    assert webhook(api, fake_paystack, "refund.processed", reference) == "applied"
    assert webhook(api, fake_paystack, "refund.processed", reference) == "duplicate"

    view = get_payment(payment.id)
    assert (view.status, view.refunded_minor) == ("refunded", 10_000)
    assert fake_paystack.refunded_minor(reference) == 10_000
    assert [r.status for r in list_refunds(payment.id)] == ["succeeded", "succeeded"]
    assert events_of(events, payment.id, 3) == [
        "payment.succeeded",
        "payment.refunded",
        "payment.refunded",
    ]
    assert [e["status"] for e in events.seen if e.get("type") == "payment.refunded"][-2:] == [
        "partially_refunded",
        "refunded",
    ]


def test_refund_failed_webhook_frees_the_amount(
    worker, tenant, fake_paystack: FakePaystack, api: TestClient
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant)
    refund_payment(payment.id)
    with pytest.raises(RefundRefused, match="nothing left to refund"):
        refund_payment(payment.id, "1")  # the open refund holds everything

    assert webhook(api, fake_paystack, "refund.failed", payment.provider_reference) == "applied"

    assert get_payment(payment.id).status == "succeeded"
    assert [r.status for r in list_refunds(payment.id)] == ["failed"]


@pytest.mark.parametrize(
    ("amount", "error", "message"),
    [
        ("5000.01", RefundRefused, "exceeds the 5000.00 NGN still refundable"),
        ("0", NonPositiveAmount, "must be greater than zero"),
        ("1.005", TooManyDecimalPlaces, "more than 2 decimal place"),
    ],
)
def test_refund_beyond_what_is_left_is_refused_before_calling_paystack(
    worker, tenant, fake_paystack: FakePaystack, amount: str, error: type[Exception], message: str
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant, amount="5000")
    calls = len(fake_paystack.requests)

    with pytest.raises(error, match=message):
        refund_payment(payment.id, amount)

    assert len(fake_paystack.requests) == calls
    assert list_refunds(payment.id) == []


def test_refund_of_an_unpaid_payment_is_refused(
    worker, tenant, fake_paystack: FakePaystack, api: TestClient
) -> None:
    paystack_instance(fake_paystack, tenant)
    receipt = pay(tenant)  # a checkout the customer has not paid
    wait_status(receipt.payment_id, "pending")

    answer = api.post(f"/payments/{receipt.payment_id}/refunds", json={"amount": "1"})

    assert answer.status_code == 422
    assert "is pending; only succeeded or partially refunded" in answer.json()["detail"]


def test_concurrent_refunds_never_exceed_the_charge(
    worker, tenant, fake_paystack: FakePaystack
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant, amount="100")
    fake_paystack.refund_status = "processed"

    def full_refund(_: int) -> RefundView | str:
        try:
            return refund_payment(payment.id)
        except RefundRefused as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(full_refund, range(5)))

    done = [r for r in results if isinstance(r, RefundView)]
    assert len(done) == 1 and done[0].status == "succeeded"
    assert all("nothing left to refund" in r for r in results if isinstance(r, str))
    assert fake_paystack.refunded_minor(payment.provider_reference) == 10_000
    view = get_payment(payment.id)
    assert (view.status, view.refunded_minor) == ("refunded", 10_000)
    assert outbox_of(payment.id) == ["payment.succeeded", "payment.refunded"]


def test_refund_with_no_answer_stays_open_and_holds_its_amount(
    worker, tenant, fake_paystack: FakePaystack
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant)
    fake_paystack.fault = "drop"  # Paystack takes the refund, the answer is lost

    refund = refund_payment(payment.id, "1000")

    assert refund.status == "pending" and "outcome unknown" in (refund.message or "")
    fake_paystack.fault = None
    with pytest.raises(RefundRefused, match="exceeds"):
        refund_payment(payment.id, "5000")  # would refund the lost 1000 twice
    assert refund_payment(payment.id).amount_minor == 400_000  # all that is left
    assert fake_paystack.refunded_minor(payment.provider_reference) == 500_000


def test_refund_when_paystack_is_unreachable_fails_and_frees_the_amount(
    worker, tenant, fake_paystack: FakePaystack
) -> None:
    paystack_instance(fake_paystack, tenant)
    payment = charged_payment(fake_paystack, tenant)
    fake_paystack.stop()  # connection refused: provably not sent

    refund = refund_payment(payment.id)

    assert refund.status == "failed" and "could not reach Paystack" in (refund.message or "")
    assert get_payment(payment.id).status == "succeeded"
