"""Flutterwave's own rules beyond the conformance suite: exact major-unit amounts, a
verify that reports what was really paid, so the worker never calls an underpaid or
other-currency transaction a success, and refund events read back from the API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from config.settings import get_settings
from providers.base import OutcomeStatus, PaymentRequest, RefundStatus, derive_reference
from providers.errors import WebhookPayloadError, WebhookSignatureError
from providers.flutterwave import FlutterwaveProvider, json_body, refund_status
from registry.db import get_database
from tests.fakes.flutterwave.server import FakeFlutterwave
from workers import runtime
from workers.events.relay import InlineRelay
from workers.ledger.outbox import OutboxEvent
from workers.ledger.records import Payment
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor
from workers.payments.refunds import RefundState, list_refunds, refund_payment
from workers.payments.webhooks import WebhookResult, receive_webhook


@pytest.fixture
def fake() -> Iterator[FakeFlutterwave]:
    with FakeFlutterwave() as running:
        yield running


def config(fake: FakeFlutterwave) -> dict[str, Any]:
    return {
        "secret_key": fake.secret_key,
        "secret_hash": fake.secret_hash,
        "base_url": fake.base_url,
    }


def test_amounts_go_as_exact_major_units_never_through_float(fake: FakeFlutterwave) -> None:
    assert json_body({"amount": Decimal("0.10") + Decimal("0.20")}) == b'{"amount": 0.30}'
    plugin = FlutterwaveProvider()
    plugin.configure(config(fake))
    request = PaymentRequest(
        payment_id=uuid.uuid4(), reference=derive_reference("k-1"), order_id="o-1",
        amount_minor=150_050, currency="NGN", customer_email="ada@example.com",
        payment_token="flw-t1nf-good",
    )  # fmt: skip
    outcome = asyncio.run(plugin.process_payment(request))
    assert outcome.status is OutcomeStatus.SUCCEEDED and outcome.amount_minor == 150_050
    assert fake.requests[-1][2]["amount"] == Decimal("1500.50")
    assert fake.requests[-1][2]["tx_ref"] == request.reference


@pytest.mark.parametrize("token", ["flw-t1nf-underpaid", "flw-t1nf-othercurrency"])
def test_an_underpaid_or_other_currency_charge_is_not_a_success(
    sqlite_url: str, fake: FakeFlutterwave, token: str
) -> None:
    registry = runtime.registry()
    registry.create_instance("flutterwave", config(fake), is_active=True)
    processor = PaymentProcessor(
        get_database(), registry, runtime.provider_loop(),
        InlineRelay(get_database(), _Quiet()), get_settings(),  # type: ignore[arg-type]
    )  # fmt: skip
    fields = _validated("o-2", "100.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields, payment_token=token, box=registry.box)
    processor.process(payment.id)
    view = get_payment(payment.id)
    assert view.status.value == "unknown" and view.error_code == "amount_mismatch"
    with get_database().sessions() as session:
        alerts = session.execute(
            select(OutboxEvent).where(OutboxEvent.event_type == "alert.raised")
        ).scalars()
        assert [a.payload["title"] for a in alerts] == [
            "payment succeeded for another amount or currency"
        ]


def charged(fake: FakeFlutterwave, key: str) -> tuple[FlutterwaveProvider, PaymentRequest]:
    plugin = FlutterwaveProvider()
    plugin.configure(config(fake))
    request = PaymentRequest(
        payment_id=uuid.uuid4(), reference=derive_reference(key), order_id="o-3",
        amount_minor=100_000, currency="NGN", customer_email="ada@example.com",
        payment_token="flw-t1nf-good",
    )  # fmt: skip
    asyncio.run(plugin.process_payment(request))
    return plugin, request


def test_refund_statuses_cover_every_completed_rail() -> None:
    assert refund_status("completed-momo") is RefundStatus.SUCCEEDED
    assert refund_status("completed") is RefundStatus.SUCCEEDED
    assert refund_status("disburse-failed") is RefundStatus.FAILED
    assert refund_status("new") is RefundStatus.PENDING


def test_a_refund_event_reports_what_the_api_says_not_what_the_body_claims(
    fake: FakeFlutterwave,
) -> None:
    fake.refunds_settle_later = True
    plugin, request = charged(fake, "k-refund-event")
    refund = asyncio.run(plugin.refund(request.reference, 40_000))
    assert refund.status is RefundStatus.PENDING and refund.refund_id

    raw, headers = fake.refund_webhook(refund.refund_id, status="completed", amount_refunded=1000)
    early = asyncio.run(plugin.parse_webhook(raw, headers))
    assert early.reference == request.reference and early.refund is not None
    assert early.refund.status is RefundStatus.PENDING  # the API says pending
    assert early.refund.amount_minor == 40_000 and early.refund.currency == "NGN"

    fake.settle_refund(refund.refund_id)
    done = asyncio.run(plugin.parse_webhook(*fake.refund_webhook(refund.refund_id)))
    assert done.refund is not None and done.refund.status is RefundStatus.SUCCEEDED
    assert done.event_id != early.event_id  # the completion is not dropped as a duplicate

    with pytest.raises(WebhookSignatureError):
        asyncio.run(plugin.parse_webhook(raw, {**headers, "verif-hash": "x" * 32}))
    unknown = raw.replace(refund.refund_id.encode(), b"999")
    with pytest.raises(WebhookPayloadError, match="no such refund"):
        asyncio.run(plugin.parse_webhook(unknown, headers))


def test_a_refund_event_settles_the_pending_refund_in_the_ledger(
    sqlite_url: str, fake: FakeFlutterwave
) -> None:
    fake.refunds_settle_later = True
    registry = runtime.registry()
    registry.create_instance("flutterwave", config(fake), is_active=True)
    publisher = _Quiet()
    processor = PaymentProcessor(
        get_database(), registry, runtime.provider_loop(),
        InlineRelay(get_database(), publisher), get_settings(),  # type: ignore[arg-type]
    )  # fmt: skip
    fields = _validated("o-4", "100.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(
        get_database(), fields, payment_token="flw-t1nf-good", box=registry.box
    )
    processor.process(payment.id)
    assert get_payment(payment.id).status.value == "succeeded"

    pending = refund_payment(payment.id, Decimal("100.00"), publisher=publisher)  # type: ignore[arg-type]
    assert pending.status is RefundState.PENDING
    fake.settle_refund(str(pending.provider_refund_id))
    raw, headers = fake.refund_webhook(str(pending.provider_refund_id))
    reply = receive_webhook("flutterwave", raw, headers, publisher=publisher)  # type: ignore[arg-type]
    assert reply.result is WebhookResult.APPLIED
    [settled] = list_refunds(payment.id)
    assert settled.status is RefundState.SUCCEEDED
    with get_database().sessions() as session:
        row = session.get(Payment, payment.id)
        assert row is not None and row.status == "refunded"


class _Quiet:
    def publish(self, rows: Any) -> None:
        pass
