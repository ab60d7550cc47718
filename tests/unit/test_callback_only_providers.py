"""Providers like M-Pesa Express (issue 39): webhooks that name only the provider's own id,
and successes that name no amount because the provider charges exactly what it was asked.
The ledger finds the payment by (plugin, provider id), and takes "the amount asked" only
where the plugin says so, never a success that merely left the amount out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import update

from config.settings import get_settings
from providers.base import (
    Capability,
    OutcomeStatus,
    PaymentOutcome,
    PaymentRequest,
    WebhookEvent,
    derive_reference,
    utcnow,
)
from providers.errors import OutcomeUnknown
from providers.sandbox import SandboxProvider
from registry.db import get_database
from workers import runtime
from workers.events.relay import InlineRelay
from workers.ledger.records import Payment, WebhookReceipt
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor, outcome_mismatch
from workers.payments.webhooks import receive_webhook

AMOUNT = 50_000  # KES 500.00


class PromptProvider(SandboxProvider):
    """A sandbox whose callbacks name only its own id and no amount: M-Pesa's shape."""

    name: ClassVar[str] = "prompt"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.FIXED_AMOUNT, Capability.UNSIGNED_WEBHOOKS, Capability.CONFIRMED_LATER}
    )

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        body = json.loads(raw_body)
        return WebhookEvent(
            provider=self.name,
            event_id=body["checkout"],
            event_type="stkCallback",
            provider_id=body["checkout"],
            status=OutcomeStatus(body["status"]),
            amount_as_asked=body.get("as_asked", True),
        )


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)


@pytest.fixture
def env(sqlite_url: str) -> Iterator[None]:
    runtime.reset()
    runtime.registry().catalogue.register("prompt", PromptProvider)
    yield
    runtime.reset()


def pending_payment(checkout: str) -> Payment:
    instance = runtime.registry().create_instance(
        "prompt", {"api_key": "sk_sandbox_prompt_0123456789"}, currencies=["KES"]
    )
    key = uuid.uuid4().hex
    row = Payment(
        id=uuid.uuid4(),
        order_id="ord-1",
        idempotency_key=key,
        reference=derive_reference(key),
        amount_minor=AMOUNT,
        currency="KES",
        customer_email="ada@example.com",
        status="pending",
        instance_id=instance.id,
        plugin_name="prompt",
        provider_transaction_id=checkout,
        metadata_={},
    )
    with get_database().transaction() as session:
        session.add(row)
    return row


def deliver(checkout: str, status: str = "succeeded", **extra: Any) -> Any:
    body = json.dumps({"checkout": checkout, "status": status, **extra}).encode()
    return receive_webhook("prompt", body, {}, publisher=RecordingPublisher())  # type: ignore[arg-type]


def state(pay: Payment) -> tuple[str, str | None]:
    with get_database().sessions() as session:
        row = session.get(Payment, pay.id)
        receipt = session.query(WebhookReceipt).one()
        assert row is not None
        return row.status, receipt.reference


def test_a_callback_naming_only_the_providers_id_settles_its_payment(env) -> None:
    pay = pending_payment("ws_CO_191220191020363925")
    reply = deliver("ws_CO_191220191020363925")
    assert (reply.result, reply.payment_id) == ("applied", pay.id)
    # paid for the amount asked; the receipt is filed under Tender's reference
    assert state(pay) == ("succeeded", pay.reference)


def test_a_callback_for_an_id_no_payment_has_changes_nothing(env) -> None:
    pay = pending_payment("ws_CO_1")
    reply = deliver("ws_CO_2")
    assert reply.result == "unknown_reference"
    assert state(pay) == ("pending", None)


def test_a_success_without_an_amount_is_not_paid_unless_the_plugin_says_as_asked(env) -> None:
    pay = pending_payment("ws_CO_3")
    reply = deliver("ws_CO_3", as_asked=False)
    assert reply.result == "mismatch"
    assert state(pay)[0] == "pending"


def test_outcome_mismatch_takes_as_asked_only_with_no_amount_and_the_same_currency() -> None:
    def paid(**fields: Any) -> PaymentOutcome:
        return PaymentOutcome(status=OutcomeStatus.SUCCEEDED, reference="tdr-1", **fields)

    assert outcome_mismatch(paid(amount_as_asked=True), AMOUNT, "KES") is None
    assert outcome_mismatch(paid(amount_as_asked=True, currency="KES"), AMOUNT, "KES") is None
    assert "currency" in (
        outcome_mismatch(paid(amount_as_asked=True, currency="USD"), AMOUNT, "KES") or ""
    )
    assert outcome_mismatch(paid(), AMOUNT, "KES") is not None  # left out: never trusted
    # an amount named is checked as always, as_asked or not
    assert outcome_mismatch(
        paid(amount_as_asked=True, amount_minor=1, currency="KES"), AMOUNT, "KES"
    )


class UnkeyedProvider(SandboxProvider):
    """A sandbox that, like M-Pesa, takes no idempotency key and reads a charge by the
    provider's id only: its verify without one can only say "unknown"."""

    name: ClassVar[str] = "unkeyed"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.UNKEYED_CHARGES})
    sent: ClassVar[list[str]] = []

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        type(self).sent.append(request.reference)
        return await super().process_payment(request)

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        if provider_id is None:
            raise OutcomeUnknown("no lookup by reference", provider=self.name)
        return await super().verify_payment(reference, provider_id=provider_id)


def test_a_charge_an_unkeyed_provider_may_hold_is_never_sent_again(env, tmp_path) -> None:
    """Its worker died mid-charge, with no provider id recorded: recovery verifies, the
    plugin can only say "unknown", and the charge is not sent a second time (a "not found"
    here would send it again, which at such a provider is a second charge)."""
    runtime.registry().catalogue.register("unkeyed", UnkeyedProvider)
    instance = runtime.registry().create_instance(
        "unkeyed", {"charge_book": str(tmp_path / "book.db")}, is_active=True
    )
    UnkeyedProvider.sent.clear()
    fields = _validated("o-1", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    with get_database().transaction() as session:  # its worker died mid-charge
        session.execute(
            update(Payment)
            .where(Payment.id == payment.id)
            .values(
                status="processing",
                claims=1,
                instance_id=instance.id,
                plugin_name="unkeyed",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    relay = InlineRelay(get_database(), RecordingPublisher())  # type: ignore[arg-type]
    processor = PaymentProcessor(
        get_database(), runtime.registry(), runtime.provider_loop(), relay, get_settings()
    )
    processor.process(payment.id)
    assert get_payment(payment.id).status == "unknown"  # an operator or a callback decides
    assert UnkeyedProvider.sent == []
