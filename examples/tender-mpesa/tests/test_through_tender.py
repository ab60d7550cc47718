"""The plugin installed into Tender (its ``tender.providers`` entry point), driven by
Tender's own payment processor and webhook receiver on an embedded database, against the
fake Daraja: a prompt, the customer's PIN, M-Pesa's unsigned callback, and a lost answer
that Tender never answers with a second prompt."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import get_settings, reset_settings
from registry.db import get_database
from registry.migrate import upgrade
from tests.test_conformance import MpesaHarness
from workers import runtime
from workers.events.relay import InlineRelay
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor
from workers.payments.webhooks import receive_webhook


class Published:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, rows: Any) -> None:
        self.events.extend(rows)


@pytest.fixture
def daraja(tender_kit_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MpesaHarness]:
    url = f"sqlite:///{tender_kit_env / 'tender.db'}"
    monkeypatch.setenv("TENDER_DATABASE_URL", url)
    reset_settings()
    upgrade(url)
    runtime.reset()
    harness = MpesaHarness(tender_kit_env)
    runtime.registry().create_instance(
        "mpesa", harness.config() | {"timeout_s": 2.0}, currencies=["KES"], is_active=True
    )
    yield harness
    harness.close()
    runtime.reset()


def processor() -> tuple[PaymentProcessor, Published]:
    published = Published()
    relay = InlineRelay(get_database(), published)
    registry, loop = runtime.registry(), runtime.provider_loop()
    return PaymentProcessor(get_database(), registry, loop, relay, get_settings()), published


def new_payment(order_id: str) -> uuid.UUID:
    fields = _validated(
        order_id, "500.00", "KES", "ada@example.com", "mobile_money",
        {"phone_number": "254708374149"}, None, None,
    )  # fmt: skip
    payment, _ = record_payment(get_database(), fields)
    return payment.id


def test_a_prompt_paid_on_the_phone_settles_by_the_unsigned_callback(daraja) -> None:
    proc, _ = processor()
    payment_id = new_payment("INV-1001")
    proc.process(payment_id)
    waiting = get_payment(payment_id)
    assert waiting.status == "pending" and waiting.provider_transaction_id  # the prompt's id
    [prompt] = daraja.fake.prompts_for("INV1001")  # the customer saw their order number
    assert prompt.amount == 500  # whole shillings

    daraja.fake.answer("INV1001", "0")  # the customer's PIN
    reply = receive_webhook(
        "mpesa",
        daraja.fake.callback(prompt),
        {},
        publisher=Published(),
    )
    assert (reply.result, reply.payment_id) == ("applied", payment_id)
    assert get_payment(payment_id).status == "succeeded"
    # the same callback again is a redelivery
    again = receive_webhook(
        "mpesa",
        daraja.fake.callback(prompt),
        {},
        publisher=Published(),
    )
    assert again.result == "duplicate"


def test_a_forged_callback_for_an_open_prompt_changes_nothing(daraja) -> None:
    proc, _ = processor()
    payment_id = new_payment("INV-1002")
    proc.process(payment_id)
    [prompt] = daraja.fake.prompts_for("INV1002")
    forged = daraja.fake.callback(prompt)  # claims success; M-Pesa's query says still open
    reply = receive_webhook("mpesa", forged, {}, publisher=Published())
    assert reply.result == "ignored"
    assert get_payment(payment_id).status == "pending"
    # the genuine result still applies afterwards
    daraja.fake.answer("INV1002", "0")
    genuine = receive_webhook("mpesa", daraja.fake.callback(prompt), {}, publisher=Published())
    assert genuine.result == "applied" and get_payment(payment_id).status == "succeeded"


def test_a_lost_answer_is_unknown_and_never_prompted_twice(daraja) -> None:
    proc, _ = processor()
    payment_id = new_payment("INV-1003")
    daraja.fake.hold_after_recording_s = 3.0  # the prompt is made, its answer never arrives
    proc.process(payment_id)
    daraja.fake.hold_after_recording_s = 0.0
    payment = get_payment(payment_id)
    assert payment.status == "unknown"  # no id to ask M-Pesa by: an operator decides
    proc.process(payment_id)  # a redelivery of the task
    assert len(daraja.fake.prompts_for("INV1003")) == 1
