"""Dispute webhooks on SQLite, in the shapes Paystack publishes (tests/fixtures/webhooks):
a dispute holds the payment (``disputed``), closes won (back to what its refunds make it)
or lost (``charged_back``), with billing's events and an operator alert naming the amount
and the deadline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from registry.db import get_database
from tests.fakes.paystack.server import dispute_event_data
from tests.unit.test_webhooks import (
    AMOUNT,
    RecordingPublisher,
    deliver,
    outbox_types,
    payment,
    paystack_instance,
    refund_body,
    refund_row,
    refunded,
    secret,
)
from workers import runtime
from workers.ledger.records import Dispute, Payment


@pytest.fixture
def env(sqlite_url: str) -> Iterator[str]:
    runtime.reset()
    yield sqlite_url
    runtime.reset()


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


def dispute_body(pay: Payment, event: str, *, resolution: str | None = None, **over: Any) -> bytes:
    data = dispute_event_data(
        event,
        reference=pay.reference,
        amount=over.pop("amount", pay.amount_minor),
        currency=over.pop("currency", pay.currency),
        resolution=resolution,
    )
    data.update(over)
    return json.dumps({"event": event, "data": data}).encode()


def published(recorded: RecordingPublisher, kind: str) -> list[dict[str, Any]]:
    return [payload for type_, payload in recorded.published if type_ == kind]


def disputes(pay: Payment) -> list[tuple[str, str, int | None]]:
    with get_database().sessions() as session:
        rows = session.execute(select(Dispute).where(Dispute.payment_id == pay.id)).scalars()
        return [(r.provider_dispute_id, r.status, r.amount_minor) for r in rows]


def test_a_dispute_holds_the_payment_and_alerts_with_amount_and_deadline(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")

    reply = deliver(dispute_body(pay, "charge.dispute.create"), key, publisher)

    assert reply.result == "applied"
    assert refunded(pay) == ("disputed", 0)
    assert outbox_types() == ["payment.disputed", "alert.raised"]
    event = published(publisher, "payment.disputed")[0]
    assert event["status"] == "disputed"
    dispute = event["dispute"]
    assert dispute["provider_dispute_id"] == "358950" and dispute["status"] == "open"
    assert dispute["amount_minor"] == AMOUNT and dispute["reason"] == "chargeback"
    assert dispute["due_by"].startswith("2020-11-25T18:00")  # the sample's dueAt
    alert = published(publisher, "alert.raised")[0]
    assert alert["severity"] == "critical"
    assert "5000.00 NGN" in alert["text"] and "2020-11-25 18:00" in alert["text"]

    # Paystack's reminder for the same dispute changes nothing; its redelivery is a duplicate
    remind = dispute_body(pay, "charge.dispute.remind")
    assert deliver(remind, key, publisher).result == "no_change"
    assert deliver(remind, key, publisher).result == "duplicate"
    assert outbox_types() == ["payment.disputed", "alert.raised"]
    assert disputes(pay) == [("358950", "open", AMOUNT)]


def test_a_dispute_lost_charges_the_payment_back(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    deliver(dispute_body(pay, "charge.dispute.create"), key, publisher)

    closed = dispute_body(pay, "charge.dispute.resolve", resolution="auto-accepted", id=358950)
    assert deliver(closed, key, publisher).result == "applied"

    assert refunded(pay) == ("charged_back", 0)
    assert disputes(pay) == [("358950", "lost", AMOUNT)]
    event = published(publisher, "payment.dispute_closed")[0]
    assert event["status"] == "charged_back" and event["dispute"]["status"] == "lost"
    lost = published(publisher, "alert.raised")[-1]
    assert lost["title"] == "dispute lost" and lost["severity"] == "critical"


def test_the_published_resolve_sample_charges_back_a_payment_never_seen_disputed(
    env, publisher
) -> None:
    """Paystack's own charge.dispute.resolve sample (auto-accepted) for a payment whose
    dispute opening never arrived: lost all the same."""
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    reply = deliver(dispute_body(pay, "charge.dispute.resolve"), key, publisher)
    assert reply.result == "applied" and refunded(pay) == ("charged_back", 0)
    assert outbox_types() == ["payment.dispute_closed", "alert.raised"]


def test_a_dispute_won_gives_back_what_the_refunds_make_the_payment(env, publisher) -> None:
    """Partly refunded, then disputed; a refund made before the dispute settles during it
    (the payment stays disputed); the dispute is won: partially refunded again."""
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    refund_row(pay, 100_000, status="pending", provider_id="77")
    deliver(dispute_body(pay, "charge.dispute.create", amount=AMOUNT - 100_000), key, publisher)
    assert refunded(pay) == ("disputed", 0)

    assert deliver(refund_body(pay, "processed", 100_000), key, publisher).result == "applied"
    assert refunded(pay) == ("disputed", 100_000)

    won = dispute_body(
        pay, "charge.dispute.resolve", resolution="declined", id=358950, amount=AMOUNT - 100_000
    )
    assert deliver(won, key, publisher).result == "applied"
    assert refunded(pay) == ("partially_refunded", 100_000)
    event = published(publisher, "payment.dispute_closed")[0]
    assert event["status"] == "partially_refunded" and event["dispute"]["status"] == "won"
    assert published(publisher, "alert.raised")[-1]["title"] == "dispute won"


def test_a_dispute_for_a_payment_never_charged_is_a_conflict_that_alerts(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="pending")
    reply = deliver(dispute_body(pay, "charge.dispute.create"), key, publisher)
    assert reply.result == "conflict"
    assert refunded(pay) == ("pending", 0) and disputes(pay) == []
    assert outbox_types() == ["alert.raised"]


def test_a_dispute_in_another_currency_is_a_conflict(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    reply = deliver(dispute_body(pay, "charge.dispute.create", currency="GHS"), key, publisher)
    assert reply.result == "conflict" and refunded(pay) == ("succeeded", 0)
