"""The sandbox provider: deterministic knobs, a charge book that refuses repeats, webhooks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import reset_settings
from providers.base import (
    HealthStatus,
    OutcomeStatus,
    PaymentOutcome,
    PaymentRequest,
    RefundStatus,
    derive_reference,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderUnavailable,
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.sandbox import SIGNATURE_HEADER, ChargeBook, SandboxProvider, charge_book

MakeSandbox = Callable[..., SandboxProvider]


@pytest.fixture
def book_path(tender_env: Path) -> str:
    return str(tender_env / "charges.sqlite")


@pytest.fixture
def sandbox(book_path: str) -> MakeSandbox:
    """A sandbox provider factory with its own charge book file (counts start at 0)."""

    def make(**config: Any) -> SandboxProvider:
        plugin = SandboxProvider()
        plugin.configure({"charge_book": book_path, **config})
        return plugin

    return make


def request(key: str = "order-1", **overrides: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "payment_id": uuid.uuid4(),
        "reference": derive_reference(key),
        "order_id": key,
        "amount_minor": 250_000,
        "currency": "NGN",
        "customer_email": "ada@example.com",
    }
    fields.update(overrides)
    return PaymentRequest(**fields)


def charge(plugin: SandboxProvider, req: PaymentRequest) -> PaymentOutcome:
    return asyncio.run(plugin.process_payment(req))


def test_a_card_charge_succeeds_and_is_recorded(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request()
    outcome = charge(plugin, req)
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert (outcome.reference, outcome.amount_minor, outcome.currency) == (
        req.reference,
        250_000,
        "NGN",
    )
    assert plugin.book.count() == 1
    assert asyncio.run(plugin.verify_payment(req.reference)) == outcome


def test_verify_of_an_unknown_reference_is_not_found(sandbox: MakeSandbox) -> None:
    outcome = asyncio.run(sandbox().verify_payment("tdr-never-sent"))
    assert outcome.status is OutcomeStatus.NOT_FOUND


def test_latency_delays_every_call(sandbox: MakeSandbox) -> None:
    plugin = sandbox(latency_ms=300)
    started = time.perf_counter()
    charge(plugin, request())
    assert time.perf_counter() - started >= 0.3
    check = asyncio.run(plugin.health_check())
    assert check.status is HealthStatus.HEALTHY
    assert check.latency_ms >= 300


def test_decline_rule_by_email_prefix(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request(customer_email="Decline.me@example.com")
    with pytest.raises(PaymentDeclined) as caught:
        charge(plugin, req)
    assert caught.value.code == "declined"
    assert asyncio.run(plugin.verify_payment(req.reference)).status is OutcomeStatus.FAILED
    # The same customer through an instance whose rule is switched off is charged.
    other = sandbox(decline_email_prefix=None)
    assert charge(other, request("order-2", customer_email="decline@example.com")).status is (
        OutcomeStatus.SUCCEEDED
    )


def test_decline_rule_by_amount(sandbox: MakeSandbox) -> None:
    plugin = sandbox(decline_amounts_minor=[666])
    with pytest.raises(PaymentDeclined):
        charge(plugin, request(amount_minor=666))
    assert charge(plugin, request("order-2", amount_minor=667)).status is OutcomeStatus.SUCCEEDED


def test_bank_transfer_is_pending_until_settled(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request(payment_method="bank_transfer")
    outcome = charge(plugin, req)
    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.authorization_url and req.reference in outcome.authorization_url
    plugin.settle(req.reference, OutcomeStatus.SUCCEEDED)
    assert asyncio.run(plugin.verify_payment(req.reference)).status is OutcomeStatus.SUCCEEDED


def test_outage_switch_raises_provider_unavailable_and_charges_nothing(
    sandbox: MakeSandbox,
) -> None:
    plugin = sandbox(outage=True)
    req = request()
    with pytest.raises(ProviderUnavailable):
        charge(plugin, req)
    with pytest.raises(ProviderUnavailable):
        asyncio.run(plugin.verify_payment(req.reference))
    with pytest.raises(ProviderUnavailable):
        asyncio.run(plugin.refund(req.reference))
    assert plugin.book.count() == 0
    assert asyncio.run(plugin.health_check()).status is HealthStatus.UNHEALTHY


def test_ambiguous_timeout_charges_then_verify_finds_it(sandbox: MakeSandbox) -> None:
    req = request()
    with pytest.raises(OutcomeUnknown):
        charge(sandbox(ambiguous_timeout=True), req)
    plugin = sandbox()
    assert plugin.book.count() == 1
    found = asyncio.run(plugin.verify_payment(req.reference))
    assert found.status is OutcomeStatus.SUCCEEDED
    assert found.amount_minor == req.amount_minor


def test_charge_book_refuses_a_second_charge_of_the_same_reference(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request()
    first = charge(plugin, req)
    # A redelivered task, even with a different amount, reuses the derived reference.
    again = charge(plugin, request(amount_minor=999))
    assert again == first
    assert plugin.book.count() == 1
    assert plugin.book.refused_repeats() == 1
    charge(plugin, req)
    assert plugin.book.count() == 1
    assert plugin.book.refused_repeats() == 2


def test_a_repeat_of_a_declined_charge_is_still_declined(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request(customer_email="decline@example.com")
    for _ in range(2):
        with pytest.raises(PaymentDeclined):
            charge(plugin, req)
    assert (plugin.book.count(), plugin.book.refused_repeats()) == (1, 1)


def test_charge_book_in_memory_is_shared_within_the_process(tender_env: Path) -> None:
    assert charge_book(None) is charge_book(None)
    plugin = SandboxProvider()
    plugin.configure({})
    req = request(f"memory-{uuid.uuid4()}")
    charge(plugin, req)
    second = SandboxProvider()
    second.configure({})
    assert asyncio.run(second.verify_payment(req.reference)).status is OutcomeStatus.SUCCEEDED


CHILD_CHARGE = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    from providers.base import PaymentRequest
    from providers.sandbox import SandboxProvider

    book, reference = sys.argv[1], sys.argv[2]
    plugin = SandboxProvider()
    plugin.configure({"charge_book": book})
    request = PaymentRequest(
        payment_id=uuid.uuid4(), reference=reference, order_id="o", amount_minor=100,
        currency="NGN", customer_email="ada@example.com",
    )
    outcome = asyncio.run(plugin.process_payment(request))
    print(json.dumps({"status": outcome.status.value, "count": plugin.book.count(),
                      "refused": plugin.book.refused_repeats()}))
    """
)


def charge_in_child(book: str, reference: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD_CHARGE, book, reference],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TENDER_ENV": "test"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_charge_book_file_is_shared_between_processes(sandbox: MakeSandbox, book_path: str) -> None:
    reference = derive_reference("shared-order")
    assert charge_in_child(book_path, reference) == {
        "status": "succeeded",
        "count": 1,
        "refused": 0,
    }
    # This process sees the other's charge and refuses to charge it again.
    plugin = sandbox()
    charge(plugin, request("shared-order", amount_minor=100))
    assert plugin.book.count() == 1
    assert plugin.book.refused_repeats() == 1
    # And a second child sees this process's refusal and new charges.
    charge(plugin, request("parent-order"))
    assert charge_in_child(book_path, reference) == {
        "status": "succeeded",
        "count": 2,
        "refused": 2,
    }


def test_charge_book_reopened_from_disk_keeps_its_charges(book_path: str) -> None:
    ChargeBook(book_path).charge("tdr-1", 100, "NGN", OutcomeStatus.SUCCEEDED)
    reopened = ChargeBook(book_path)
    assert reopened.references() == ["tdr-1"]
    assert reopened.charge("tdr-1", 100, "NGN", OutcomeStatus.SUCCEEDED)[1] is False


# -- refunds -------------------------------------------------------------------------


def test_full_refund_returns_the_whole_amount(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request()
    charge(plugin, req)
    refund = asyncio.run(plugin.refund(req.reference))
    assert refund.status is RefundStatus.SUCCEEDED
    assert (refund.amount_minor, refund.currency) == (250_000, "NGN")
    with pytest.raises(PaymentDeclined):  # nothing left
        asyncio.run(plugin.refund(req.reference))


def test_partial_refunds_then_the_rest(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request()
    charge(plugin, req)
    assert asyncio.run(plugin.refund(req.reference, 100_000)).amount_minor == 100_000
    assert asyncio.run(plugin.refund(req.reference, 50_000)).amount_minor == 50_000
    assert asyncio.run(plugin.refund(req.reference)).amount_minor == 100_000
    assert plugin.book.get(req.reference).refunded_minor == 250_000  # type: ignore[union-attr]


def test_over_refund_is_declined_and_changes_nothing(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    req = request()
    charge(plugin, req)
    asyncio.run(plugin.refund(req.reference, 200_000))
    with pytest.raises(PaymentDeclined) as caught:
        asyncio.run(plugin.refund(req.reference, 50_001))
    assert caught.value.code == "refund_exceeds_charge"
    assert plugin.book.get(req.reference).refunded_minor == 200_000  # type: ignore[union-attr]


@pytest.mark.parametrize("amount", [0, -100_000])
def test_zero_or_negative_refund_is_declined(sandbox: MakeSandbox, amount: int) -> None:
    plugin = sandbox()
    req = request()
    charge(plugin, req)
    asyncio.run(plugin.refund(req.reference, 200_000))
    with pytest.raises(PaymentDeclined):
        asyncio.run(plugin.refund(req.reference, amount))
    assert plugin.book.get(req.reference).refunded_minor == 200_000  # type: ignore[union-attr]
    with pytest.raises(PaymentDeclined):
        asyncio.run(plugin.refund(req.reference, 50_001))


def test_refund_without_a_successful_charge_is_declined(sandbox: MakeSandbox) -> None:
    plugin = sandbox()
    with pytest.raises(PaymentDeclined):
        asyncio.run(plugin.refund("tdr-unknown"))
    pending = request(payment_method="bank_transfer")
    charge(plugin, pending)
    with pytest.raises(PaymentDeclined):
        asyncio.run(plugin.refund(pending.reference))


# -- webhooks ------------------------------------------------------------------------


def event_body(**overrides: Any) -> bytes:
    body = {
        "id": "evt-1",
        "type": "charge.success",
        "reference": "tdr-1",
        "status": "succeeded",
        "amount_minor": 100,
        "currency": "NGN",
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_signed_webhook_is_parsed(sandbox: MakeSandbox) -> None:
    plugin = sandbox(api_key="sk_sandbox_hooks")
    body = event_body()
    event = asyncio.run(plugin.parse_webhook(body, {SIGNATURE_HEADER.upper(): plugin.sign(body)}))
    assert (event.provider, event.event_id, event.event_type) == (
        "sandbox",
        "evt-1",
        "charge.success",
    )
    assert (event.reference, event.status, event.amount_minor) == (
        "tdr-1",
        OutcomeStatus.SUCCEEDED,
        100,
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: "0" * 64},
        {"x-other-signature": "whatever"},
    ],
)
def test_webhook_with_a_missing_or_bad_signature_is_refused(
    sandbox: MakeSandbox, headers: dict[str, str]
) -> None:
    with pytest.raises(WebhookSignatureError):
        asyncio.run(sandbox().parse_webhook(event_body(), headers))


def test_sandbox_without_a_key_refuses_every_webhook(sandbox: MakeSandbox) -> None:
    """No built-in signing key: one every installation shares would let anyone sign."""
    body = event_body()
    old_default = hmac.new(b"sk_sandbox_default", body, hashlib.sha256).hexdigest()
    with pytest.raises(WebhookSignatureError, match="no api_key"):
        asyncio.run(sandbox().parse_webhook(body, {SIGNATURE_HEADER: old_default}))


def test_webhook_signature_covers_the_raw_body_and_the_key(sandbox: MakeSandbox) -> None:
    plugin = sandbox(api_key="sk_sandbox_mine")
    signature = plugin.sign(event_body())
    with pytest.raises(WebhookSignatureError):  # tampered amount
        asyncio.run(plugin.parse_webhook(event_body(amount_minor=1), {SIGNATURE_HEADER: signature}))
    other = sandbox(api_key="sk_sandbox_someone_else")
    with pytest.raises(WebhookSignatureError):
        asyncio.run(
            plugin.parse_webhook(event_body(), {SIGNATURE_HEADER: other.sign(event_body())})
        )


@pytest.mark.parametrize("body", [b"not json", b"[]", event_body(status="maybe"), b'{"id": 1}'])
def test_signed_but_unreadable_webhook_is_a_payload_error(
    sandbox: MakeSandbox, body: bytes
) -> None:
    plugin = sandbox(api_key="sk_sandbox_hooks")
    with pytest.raises(WebhookPayloadError):
        asyncio.run(plugin.parse_webhook(body, {SIGNATURE_HEADER: plugin.sign(body)}))


# -- production ----------------------------------------------------------------------


def test_sandbox_refused_in_production(tender_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SandboxProvider().configure({})  # fine in test
    monkeypatch.setenv("TENDER_ENV", "production")
    reset_settings()
    with pytest.raises(ConfigurationError, match="production"):
        SandboxProvider().configure({})
    with pytest.raises(ConfigurationError, match="production"):
        SandboxProvider.validate_config({"latency_ms": 5})
