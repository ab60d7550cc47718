"""The Paystack provider against the local fake Paystack, through the real pypaystack2 SDK."""

# ruff: noqa: F811 - tests take the imported ``fake_paystack`` fixture as an argument

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from providers.base import (
    HealthStatus,
    OutcomeStatus,
    PaymentRequest,
    RefundStatus,
    derive_reference,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderError,
    ProviderUnavailable,
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.paystack import PaystackConfig, PaystackProvider
from tests.fakes.paystack import (
    DECLINED_AUTHORIZATION,
    GOOD_AUTHORIZATION,
    FakePaystack,
    unused_local_url,
)
from tests.fakes.paystack.fixtures import fake_paystack  # noqa: F401

T = TypeVar("T")
TIMEOUT_S = 0.5  # the fake's "slow" fault holds answers for 1.5 s


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def make_provider(fake: FakePaystack, **overrides: Any) -> PaystackProvider:
    provider = PaystackProvider()
    config: dict[str, Any] = {
        "secret_key": fake.secret_key,
        "public_key": fake.public_key,
        "base_url": fake.base_url,
        "callback_url": "https://shop.example/paid",
        "timeout_s": TIMEOUT_S,
    }
    provider.configure({**config, **overrides})
    return provider


def payment(
    *, token: str | None = None, amount_minor: int = 50_000, currency: str = "NGN"
) -> PaymentRequest:
    return PaymentRequest(
        payment_id=uuid.uuid4(),
        reference=derive_reference(str(uuid.uuid4())),
        order_id="order-42",
        amount_minor=amount_minor,
        currency=currency,
        customer_email="ada@example.com",
        payment_token=token,
        metadata={"cart": "c-7"},
    )


def charged(fake: FakePaystack, provider: PaystackProvider, amount_minor: int = 50_000) -> str:
    request = payment(token=GOOD_AUTHORIZATION, amount_minor=amount_minor)
    run(provider.process_payment(request))
    return request.reference


# --- charging -------------------------------------------------------------------------


def test_checkout_is_pending_with_authorization_url(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    request = payment()

    outcome = run(provider.process_payment(request))

    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.reference == request.reference
    assert outcome.authorization_url and outcome.authorization_url.startswith(
        "https://checkout.paystack.com/"
    )
    sent = fake_paystack.requests[-1][2]
    assert sent["reference"] == request.reference
    assert sent["amount"] == 50_000
    assert sent["currency"] == "NGN"
    assert sent["email"] == "ada@example.com"
    assert sent["callback_url"] == "https://shop.example/paid"
    assert sent["metadata"] == {
        "cart": "c-7",
        "payment_id": str(request.payment_id),
        "order_id": "order-42",
    }
    assert fake_paystack.charges_count(request.reference) == 1


def test_saved_card_charge_succeeds(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    request = payment(token=GOOD_AUTHORIZATION)

    outcome = run(provider.process_payment(request))

    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert outcome.amount_minor == 50_000
    assert outcome.currency == "NGN"
    assert outcome.provider_transaction_id
    assert fake_paystack.requests[-1][2]["authorization_code"] == GOOD_AUTHORIZATION


def test_saved_card_decline_carries_gateway_response(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)

    with pytest.raises(PaymentDeclined, match="Insufficient Funds"):
        run(provider.process_payment(payment(token=DECLINED_AUTHORIZATION)))


def test_unknown_authorization_is_declined_with_paystack_message_and_code(
    fake_paystack: FakePaystack,
) -> None:
    provider = make_provider(fake_paystack)

    with pytest.raises(PaymentDeclined) as caught:
        run(provider.process_payment(payment(token="AUTH_neverissued")))

    assert "does not exist" in caught.value.message
    assert caught.value.code == "invalid_authorization_code"


def test_unsupported_currency_is_refused_before_sending(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)

    with pytest.raises(ProviderUnavailable, match="EUR"):
        run(provider.process_payment(payment(currency="EUR")))
    assert fake_paystack.requests == []


# --- duplicates: Paystack's reference is the idempotency key ----------------------------


def test_repeated_saved_card_charge_reports_first_outcome_and_charges_once(
    fake_paystack: FakePaystack,
) -> None:
    provider = make_provider(fake_paystack)
    request = payment(token=GOOD_AUTHORIZATION)

    first = run(provider.process_payment(request))
    again = run(provider.process_payment(request))

    assert first.status is again.status is OutcomeStatus.SUCCEEDED
    assert again.provider_transaction_id == first.provider_transaction_id
    assert fake_paystack.charges_count(request.reference) == 1


def test_repeated_declined_charge_is_still_the_decline(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    request = payment(token=DECLINED_AUTHORIZATION)
    with pytest.raises(PaymentDeclined):
        run(provider.process_payment(request))

    with pytest.raises(PaymentDeclined, match="Insufficient Funds"):
        run(provider.process_payment(request))
    assert fake_paystack.charges_count(request.reference) == 1


def test_repeated_checkout_is_pending_then_reports_payment(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    request = payment()
    run(provider.process_payment(request))

    assert run(provider.process_payment(request)).status is OutcomeStatus.PENDING
    fake_paystack.set_status(request.reference, "success")
    assert run(provider.process_payment(request)).status is OutcomeStatus.SUCCEEDED
    assert fake_paystack.charges_count(request.reference) == 1


# --- verify -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paystack_status", "expected"),
    [
        ("success", OutcomeStatus.SUCCEEDED),
        ("failed", OutcomeStatus.FAILED),
        ("reversed", OutcomeStatus.FAILED),
        ("abandoned", OutcomeStatus.PENDING),
        ("ongoing", OutcomeStatus.PENDING),
        ("pending", OutcomeStatus.PENDING),
        ("processing", OutcomeStatus.PENDING),
        ("queued", OutcomeStatus.PENDING),
    ],
)
def test_verify_maps_paystack_status(
    fake_paystack: FakePaystack, paystack_status: str, expected: OutcomeStatus
) -> None:
    provider = make_provider(fake_paystack)
    request = payment()
    run(provider.process_payment(request))
    fake_paystack.set_status(request.reference, paystack_status)

    outcome = run(provider.verify_payment(request.reference))

    assert outcome.status is expected
    assert outcome.amount_minor == 50_000
    assert outcome.code == paystack_status


def test_verify_unknown_reference_is_not_found(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)

    outcome = run(provider.verify_payment("tdr-never-sent"))

    assert outcome.status is OutcomeStatus.NOT_FOUND
    assert outcome.reference == "tdr-never-sent"


# --- failures on the wire -----------------------------------------------------------------


def test_wrong_secret_key_is_a_configuration_error(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack, secret_key="sk_test_wrong")

    with pytest.raises(ConfigurationError, match="secret key rejected"):
        run(provider.process_payment(payment()))
    with pytest.raises(ConfigurationError, match="secret key rejected"):
        run(provider.verify_payment("tdr-x"))
    with pytest.raises(ConfigurationError, match="secret key rejected"):
        run(provider.health_check())


def test_connection_refused_is_provider_unavailable() -> None:
    provider = PaystackProvider()
    provider.configure(
        {
            "secret_key": "sk_test_closedport",
            "public_key": "pk_test_closedport",
            "base_url": unused_local_url(),
            "timeout_s": TIMEOUT_S,
        }
    )

    with pytest.raises(ProviderUnavailable, match="could not reach Paystack"):
        run(provider.process_payment(payment(token=GOOD_AUTHORIZATION)))
    with pytest.raises(ProviderUnavailable):
        run(provider.refund("tdr-x"))
    health = run(provider.health_check())
    assert health.status is HealthStatus.UNHEALTHY
    assert health.latency_ms >= 0


def test_answer_slower_than_timeout_is_unknown_and_verify_finds_one_charge(
    fake_paystack: FakePaystack,
) -> None:
    provider = make_provider(fake_paystack)
    request = payment(token=GOOD_AUTHORIZATION)
    fake_paystack.fault = "slow"

    # The fake answers success after 1.5 s: only the client's own timeout makes this unknown.
    with pytest.raises(OutcomeUnknown):
        run(provider.process_payment(request))

    fake_paystack.fault = None
    outcome = run(provider.verify_payment(request.reference))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert fake_paystack.charges_count(request.reference) == 1
    # The worker's retry after an unknown outcome charges nothing more.
    assert run(provider.process_payment(request)).status is OutcomeStatus.SUCCEEDED
    assert fake_paystack.charges_count(request.reference) == 1


def test_dropped_connection_after_charging_is_unknown(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    request = payment(token=GOOD_AUTHORIZATION)
    fake_paystack.fault = "drop"

    with pytest.raises(OutcomeUnknown, match="no answer"):
        run(provider.process_payment(request))
    with pytest.raises(ProviderUnavailable):
        run(provider.verify_payment(request.reference))

    fake_paystack.fault = None
    assert run(provider.verify_payment(request.reference)).status is OutcomeStatus.SUCCEEDED
    assert fake_paystack.charges_count(request.reference) == 1


def test_server_error_is_unknown_for_a_charge_and_unavailable_for_reads(
    fake_paystack: FakePaystack,
) -> None:
    provider = make_provider(fake_paystack)
    fake_paystack.fault = "5xx"

    with pytest.raises(OutcomeUnknown, match="HTTP 500"):
        run(provider.process_payment(payment(token=GOOD_AUTHORIZATION)))
    with pytest.raises(OutcomeUnknown):
        run(provider.refund("tdr-x"))
    with pytest.raises(ProviderUnavailable):
        run(provider.verify_payment("tdr-x"))
    assert run(provider.health_check()).status is HealthStatus.UNHEALTHY


def test_html_error_page_is_handled_not_crashed_on(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    fake_paystack.fault = "html"

    with pytest.raises(OutcomeUnknown, match="unreadable answer"):
        run(provider.process_payment(payment()))
    with pytest.raises(ProviderUnavailable, match="unreadable answer"):
        run(provider.verify_payment("tdr-x"))
    health = run(provider.health_check())
    assert health.status is HealthStatus.UNHEALTHY
    assert "unreadable" in health.message


def test_health_check_is_healthy_with_latency(fake_paystack: FakePaystack) -> None:
    health = run(make_provider(fake_paystack).health_check())

    assert health.status is HealthStatus.HEALTHY
    assert 0 <= health.latency_ms < TIMEOUT_S * 1000


# --- refunds ------------------------------------------------------------------------------


def test_full_refund(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    reference = charged(fake_paystack, provider)

    refund = run(provider.refund(reference))

    assert refund.status is RefundStatus.PENDING  # Paystack queues refunds
    assert refund.amount_minor == 50_000
    assert refund.reference == reference
    assert refund.refund_id
    assert fake_paystack.refunded_minor(reference) == 50_000


def test_processed_refund_is_succeeded(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    reference = charged(fake_paystack, provider)
    fake_paystack.refund_status = "processed"

    assert run(provider.refund(reference)).status is RefundStatus.SUCCEEDED


def test_partial_refunds_up_to_the_charge_then_declined(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    reference = charged(fake_paystack, provider)

    assert run(provider.refund(reference, 20_000)).amount_minor == 20_000
    with pytest.raises(PaymentDeclined, match="cannot be more than"):
        run(provider.refund(reference, 30_001))
    assert run(provider.refund(reference, 30_000)).amount_minor == 30_000
    with pytest.raises(PaymentDeclined, match="fully reversed"):
        run(provider.refund(reference))
    assert fake_paystack.refunded_minor(reference) == 50_000


def test_refund_of_unknown_transaction_is_declined(fake_paystack: FakePaystack) -> None:
    with pytest.raises(PaymentDeclined, match="not found"):
        run(make_provider(fake_paystack).refund("tdr-never-sent"))


def test_refund_without_answer_is_unknown(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    reference = charged(fake_paystack, provider)
    fake_paystack.fault = "slow"

    with pytest.raises(OutcomeUnknown):
        run(provider.refund(reference, 1_000, currency="NGN"))  # as the ledger calls it


# --- webhooks -----------------------------------------------------------------------------


def test_signed_charge_success_webhook_is_parsed(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    request = payment()
    run(provider.process_payment(request))
    fake_paystack.set_status(request.reference, "success")
    body, headers = fake_paystack.webhook(
        "charge.success", fake_paystack.event_data("charge.success", request.reference)
    )

    event = run(provider.parse_webhook(body, headers))

    assert event.provider == "paystack"
    assert event.event_type == "charge.success"
    assert event.reference == request.reference
    assert event.status is OutcomeStatus.SUCCEEDED
    assert event.amount_minor == 50_000
    assert event.currency == "NGN"
    # A redelivery of the same event has the same id, so Tender dedupes it.
    assert run(provider.parse_webhook(body, headers)).event_id == event.event_id


def test_refund_webhooks_carry_a_refund_outcome(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    reference = charged(fake_paystack, provider)
    run(provider.refund(reference, 5_000))

    ids = set()
    for name, expected in [
        ("refund.pending", RefundStatus.PENDING),
        ("refund.processed", RefundStatus.SUCCEEDED),
        ("refund.failed", RefundStatus.FAILED),
    ]:
        body, headers = fake_paystack.webhook(name, fake_paystack.event_data(name, reference))
        event = run(provider.parse_webhook(body, headers))
        assert event.refund is not None
        assert event.refund.status is expected
        assert event.refund.amount_minor == 5_000
        assert event.reference == reference
        assert event.status is None
        ids.add(event.event_id)
    assert len(ids) == 3


def test_unrelated_event_is_returned_without_a_status(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    body, headers = fake_paystack.webhook("transfer.success", {"id": 7, "status": "success"})

    event = run(provider.parse_webhook(body, headers))

    assert event.status is None and event.refund is None
    assert event.event_type == "transfer.success"


def test_forged_or_missing_signature_is_refused(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    body, headers = fake_paystack.webhook("charge.success", {"id": 1, "reference": "r"})
    forged = FakePaystack(secret_key="sk_test_someoneelse").webhook(
        "charge.success", {"id": 1, "reference": "r"}
    )

    with pytest.raises(WebhookSignatureError):
        run(provider.parse_webhook(body, {}))
    with pytest.raises(WebhookSignatureError):
        run(provider.parse_webhook(*forged))
    tampered = body.replace(b'"reference":"r"', b'"reference":"s"')
    with pytest.raises(WebhookSignatureError):
        run(provider.parse_webhook(tampered, headers))
    with pytest.raises(WebhookSignatureError):
        run(provider.parse_webhook(body, {"X-Paystack-Signature": "zz" * 64 + "é"}))


def test_signature_is_checked_before_the_body_is_read(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)

    with pytest.raises(WebhookSignatureError):
        run(provider.parse_webhook(b"not json", {"x-paystack-signature": "0" * 128}))


@pytest.mark.parametrize(
    "raw_body",
    [
        b"not json",
        b"[1, 2]",
        b'{"event": "charge.success"}',
        b'{"event": "charge.success", "data": {"id": 1}}',
        b"\xff\xfe",
    ],
)
def test_signed_but_unreadable_body_is_a_payload_error(
    fake_paystack: FakePaystack, raw_body: bytes
) -> None:
    provider = make_provider(fake_paystack)
    headers = {"X-Paystack-Signature": fake_paystack.sign(raw_body)}

    with pytest.raises(WebhookPayloadError):
        run(provider.parse_webhook(raw_body, headers))


# --- configuration and secrets --------------------------------------------------------------


def test_config_refuses_bad_values_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as caught:
        PaystackProvider().configure(
            {"secret_key": "pk_live_oops_public", "public_key": "pk_x", "timeout_s": 0}
        )
    message = str(caught.value)
    assert "secret_key" in message and "timeout_s" in message
    assert "pk_live_oops_public" not in message
    with pytest.raises(ConfigurationError, match="default_currency"):
        PaystackProvider().configure(
            {"secret_key": "sk_x", "public_key": "pk_x", "default_currency": "EUR"}
        )


def test_secret_fields_are_declared_secret() -> None:
    assert PaystackConfig.secret_fields() == {"secret_key", "public_key"}


def test_base_url_is_set_on_this_instance_only(fake_paystack: FakePaystack) -> None:
    from pypaystack2.sub_clients.async_clients.transactions import AsyncTransactionClient

    provider = make_provider(fake_paystack)
    client = provider._sdk

    assert fake_paystack.base_url == client.transactions._BASE_URL
    assert fake_paystack.base_url == client.refunds._BASE_URL
    assert AsyncTransactionClient._BASE_URL == "https://api.paystack.co"


def test_use_after_aclose_fails_loudly(fake_paystack: FakePaystack) -> None:
    provider = make_provider(fake_paystack)
    run(provider.aclose())

    with pytest.raises(ConfigurationError, match="aclose"):
        run(provider.verify_payment("tdr-x"))


def test_secret_key_never_appears_in_reprs_errors_or_logs(
    fake_paystack: FakePaystack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider(fake_paystack)
    secret = fake_paystack.secret_key
    errors: list[ProviderError] = []

    async def scenario() -> None:
        await provider.process_payment(payment())
        reference = payment(token=GOOD_AUTHORIZATION)
        await provider.process_payment(reference)
        await provider.process_payment(reference)
        await provider.refund(reference.reference, 10)
        await provider.health_check()
        for fault in ("5xx", "html", "drop", "slow"):
            fake_paystack.fault = fault
            try:
                await provider.process_payment(payment(token=GOOD_AUTHORIZATION))
            except ProviderError as exc:
                errors.append(exc)
        fake_paystack.fault = None
        for call in (
            provider.process_payment(payment(token=DECLINED_AUTHORIZATION)),
            provider.refund("tdr-missing"),
        ):
            try:
                await call
            except ProviderError as exc:
                errors.append(exc)

    run(scenario())
    wrong = make_provider(fake_paystack, secret_key=secret + "x")
    with pytest.raises(ConfigurationError) as rejected:
        run(wrong.process_payment(payment()))
    errors.append(rejected.value)

    assert len(errors) == 7
    texts = [repr(provider), repr(provider.config), str(provider.config), caplog.text]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [json.dumps(provider.config.model_dump(mode="json"))]
    for text in texts:
        assert secret not in text
    assert caplog.records  # the scenario did log


@pytest.mark.parametrize(
    ("currency", "minor", "subunits"),
    [("XOF", 1500, 150_000), ("RWF", 7, 700), ("NGN", 1250, 1250)],
)
def test_amounts_go_to_paystack_in_its_subunit_for_every_currency(
    fake_paystack: FakePaystack, currency: str, minor: int, subunits: int
) -> None:
    """Paystack reads every amount as a hundredth of the currency, XOF and RWF included
    (which ISO gives no minor unit): 1500 XOF goes out as 150000, and comes back as 1500
    (issue 34, item 4; before, a XOF customer paid a hundredth of the price)."""
    provider = make_provider(fake_paystack)
    request = payment(token=GOOD_AUTHORIZATION, amount_minor=minor, currency=currency)
    paid = run(provider.process_payment(request))
    transaction = fake_paystack.transaction(request.reference)
    assert transaction is not None and transaction["amount"] == subunits
    assert (paid.amount_minor, paid.currency) == (minor, currency)
    verified = run(provider.verify_payment(request.reference))
    assert verified.amount_minor == minor
    if minor > 1:
        part = run(
            provider.refund(request.reference, minor // 2, refund_key="rf-u", currency=currency)
        )
        assert part.amount_minor == minor // 2
        assert fake_paystack.refunded_minor(request.reference) == subunits // minor * (minor // 2)
