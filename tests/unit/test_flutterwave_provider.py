"""Flutterwave's own rules beyond the conformance suite: exact major-unit amounts, and a
verify that reports what was really paid, so the worker never calls an underpaid or
other-currency transaction a success."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from config.settings import get_settings
from providers.base import OutcomeStatus, PaymentRequest, derive_reference
from providers.flutterwave import FlutterwaveProvider, json_body
from registry.db import get_database
from tests.fakes.flutterwave.server import FakeFlutterwave
from workers import runtime
from workers.events.relay import InlineRelay
from workers.ledger.outbox import OutboxEvent
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor


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


class _Quiet:
    def publish(self, rows: Any) -> None:
        pass
