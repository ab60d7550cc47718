"""The PayPal plugin's own rules beyond the conformance suite: one OAuth token per instance,
request ids on every money call, PayPal's currency rules, its error issues, verify through
the idempotent create, and webhooks PayPal vouches for (approval captured, refunds settled).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from config.settings import get_settings
from providers.base import (
    DisputeStatus,
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
    ProviderUnavailable,
    WebhookSignatureError,
)
from providers.paypal import PayPalProvider, from_paypal_value, to_paypal_value
from registry.db import get_database
from tests.fakes.paypal.server import FakePayPal
from workers import runtime
from workers.events.relay import InlineRelay
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor
from workers.payments.refunds import RefundState, list_refunds, refund_payment
from workers.payments.webhooks import WebhookResult, receive_webhook


@pytest.fixture
def fake() -> Iterator[FakePayPal]:
    with FakePayPal() as running:
        yield running


def config(fake: FakePayPal, **changes: Any) -> dict[str, Any]:
    return {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "webhook_id": fake.webhook_id,
        "base_url": fake.base_url,
        "timeout_s": 2,
    } | changes


def provider(fake: FakePayPal, **changes: Any) -> PayPalProvider:
    plugin = PayPalProvider()
    plugin.configure(config(fake, **changes))
    return plugin


def request(token: str | None = "pp-vault-good", **fields: Any) -> PaymentRequest:
    values: dict[str, Any] = {
        "payment_id": uuid.uuid4(),
        "reference": derive_reference(str(uuid.uuid4())),
        "order_id": "order-9",
        "amount_minor": 1250,
        "currency": "USD",
        "customer_email": "ada@example.com",
        "payment_token": token,
    }
    return PaymentRequest(**(values | fields))


# --- tokens ---------------------------------------------------------------------------------


def test_many_payments_share_one_token(fake: FakePayPal) -> None:
    plugin = provider(fake)

    async def pay_all() -> list[Any]:
        first = await plugin.process_payment(request())  # then 19 at once, on many threads
        rest = await asyncio.gather(*(plugin.process_payment(request()) for _ in range(19)))
        return [first, *rest]

    outcomes = asyncio.run(pay_all())
    assert {o.status for o in outcomes} == {OutcomeStatus.SUCCEEDED}
    assert fake.token_requests == 1


def test_a_refused_token_is_renewed_once_and_the_call_repeated(fake: FakePayPal) -> None:
    plugin = provider(fake)
    asyncio.run(plugin.process_payment(request()))
    fake.revoke_tokens()  # PayPal drops the token before its expiry
    again = request()
    assert asyncio.run(plugin.process_payment(again)).status is OutcomeStatus.SUCCEEDED
    assert fake.token_requests == 2 and fake.charges_count(again.reference) == 1


def test_a_token_refused_after_a_health_check_renewed_it_is_renewed_again(
    fake: FakePayPal,
) -> None:
    """The health check renews the instance's token while the SDK still holds the one
    before it: a 401 must renew what the SDK sends, not only the cache's (issue 33)."""
    plugin = provider(fake)
    asyncio.run(plugin.process_payment(request()))  # the SDK now holds token 1
    assert asyncio.run(plugin.health_check()).status is HealthStatus.HEALTHY  # token 2
    fake.revoke_tokens()  # PayPal drops both before their expiry
    again = request()
    assert asyncio.run(plugin.process_payment(again)).status is OutcomeStatus.SUCCEEDED
    assert fake.token_requests == 3 and fake.charges_count(again.reference) == 1


def test_an_expiring_token_is_renewed_before_paypal_refuses_it() -> None:
    with FakePayPal(token_ttl_s=2) as fake:  # renewed after half its life, at 1 s
        plugin = provider(fake)
        asyncio.run(plugin.process_payment(request()))
        time.sleep(2.1)  # PayPal's clock is whole seconds
        asyncio.run(plugin.process_payment(request()))
        assert fake.token_requests == 2
        assert len(fake.request_ids("/v2/checkout/orders")) == 2  # no call was refused


def test_rejected_credentials_are_a_configuration_error_without_the_secret(
    fake: FakePayPal,
) -> None:
    wrong = "E" + "x" * 40
    with pytest.raises(ConfigurationError, match="key") as rejected:
        asyncio.run(provider(fake, client_secret=wrong).process_payment(request()))
    assert wrong not in str(rejected.value) and fake.client_secret not in str(rejected.value)
    assert fake.charges_count(request().reference) == 0


# --- at most once ----------------------------------------------------------------------------


def test_every_create_capture_and_refund_carries_a_request_id_from_the_reference(
    fake: FakePayPal,
) -> None:
    plugin = provider(fake)
    paid = request()
    order_id = asyncio.run(plugin.process_payment(paid)).provider_transaction_id
    asyncio.run(plugin.refund(paid.reference, 250, provider_id=order_id))
    ref = paid.reference
    assert fake.request_ids("/v2/checkout/orders") == [f"tender-{ref}-create"]
    assert fake.request_ids("/capture") == [f"tender-{ref}-capture"]
    assert fake.request_ids("/refund") == [f"tender-{ref}-refund-250"]
    [order] = fake.orders_for(ref)
    unit = order["purchase_units"][0]
    assert unit["reference_id"] == unit["invoice_id"] == ref


def test_after_request_ids_expire_the_invoice_id_still_stops_a_second_charge(
    fake: FakePayPal,
) -> None:
    plugin = provider(fake)
    paid = request()
    asyncio.run(plugin.process_payment(paid))
    fake.forget_request_ids()  # six hours later: PayPal no longer knows the request ids
    with pytest.raises(OutcomeUnknown) as unknown:
        asyncio.run(plugin.process_payment(paid))
    assert unknown.value.code == "DUPLICATE_INVOICE_ID"
    assert fake.charges_count(paid.reference) == 1


# --- verify -----------------------------------------------------------------------------------


def test_a_capture_whose_answer_was_lost_names_its_order_and_verify_reads_it(
    fake: FakePayPal,
) -> None:
    """The order exists before its capture is sent: the lost answer's OutcomeUnknown names
    it, so the ledger keeps the id and verify reads the order by it (issue 33)."""
    plugin = provider(fake)
    fake.fault = "slow"  # the capture is applied, its answer lost
    paid = request()
    with pytest.raises(OutcomeUnknown) as lost:
        asyncio.run(provider(fake, timeout_s=0.5).process_payment(paid))
    fake.fault = None
    [order] = fake.orders_for(paid.reference)
    assert lost.value.provider_id == order["id"]
    verified = asyncio.run(plugin.verify_payment(paid.reference, provider_id=order["id"]))
    assert verified.status is OutcomeStatus.SUCCEEDED
    assert (verified.amount_minor, verified.currency) == (1250, "USD")
    assert fake.charges_count(paid.reference) == 1 and len(fake.orders_for(paid.reference)) == 1


def test_verify_creates_nothing_and_without_an_order_id_cannot_tell(fake: FakePayPal) -> None:
    """PayPal reads orders by id only. A verify without one used to replay the create, which
    made a 1.00 USD "probe" order when none existed (issue 33, item 1); now it answers
    unknown and creates nothing, and recovery replays the charge instead."""
    plugin = provider(fake)
    never = request()
    orders = fake.orders_count()
    with pytest.raises(OutcomeUnknown) as unknown:
        asyncio.run(plugin.verify_payment(never.reference))
    assert unknown.value.code == "no_order_id" and fake.orders_count() == orders

    fake.fault = "5xx"  # the saved-source capture fails after the order exists
    lost = request()
    with pytest.raises(OutcomeUnknown) as failed:
        asyncio.run(plugin.process_payment(lost))
    fake.fault = None
    by_id = asyncio.run(plugin.verify_payment(lost.reference, provider_id=failed.value.provider_id))
    assert by_id.status is OutcomeStatus.NOT_FOUND  # created, never captured: not charged


def test_replaying_the_charge_recovers_a_lost_answer_without_a_second_charge(
    fake: FakePayPal,
) -> None:
    """Crash recovery without an order id repeats the charge: the same request ids make it
    a replay of the predecessor's order and capture (REPLAYS_TO_RECOVER)."""
    fake.fault = "slow"
    paid = request()
    with pytest.raises(OutcomeUnknown):
        asyncio.run(provider(fake, timeout_s=0.5).process_payment(paid))
    fake.fault = None
    replayed = asyncio.run(provider(fake).process_payment(paid))
    assert replayed.status is OutcomeStatus.SUCCEEDED and replayed.amount_minor == 1250
    assert fake.charges_count(paid.reference) == 1 and len(fake.orders_for(paid.reference)) == 1


def test_a_checkout_waits_for_approval_and_verify_captures_an_approved_order(
    fake: FakePayPal,
) -> None:
    plugin = provider(fake)
    checkout = request(token=None)
    pending = asyncio.run(plugin.process_payment(checkout))
    assert pending.status is OutcomeStatus.PENDING and pending.provider_transaction_id
    assert pending.authorization_url == (
        f"https://www.sandbox.paypal.com/checkoutnow?token={pending.provider_transaction_id}"
    )
    order_id = pending.provider_transaction_id
    waiting = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert waiting.status is OutcomeStatus.PENDING and fake.charges_count(checkout.reference) == 0
    fake.approve(order_id)
    for _ in range(2):  # the second verify reads the capture the first one made
        verified = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
        assert verified.status is OutcomeStatus.SUCCEEDED
    assert fake.charges_count(checkout.reference) == 1


# --- money and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "value"),
    [(1250, "USD", "12.50"), (1500, "JPY", "1500"), (150_000, "HUF", "1500"), (9900, "TWD", "99")],
)
def test_amounts_follow_paypals_decimals_both_ways(minor: int, currency: str, value: str) -> None:
    assert to_paypal_value(minor, currency) == value
    assert from_paypal_value(value, currency) == minor


def test_an_amount_paypal_cannot_carry_is_refused_before_sending(fake: FakePayPal) -> None:
    with pytest.raises(ProviderUnavailable) as refused:
        asyncio.run(provider(fake).process_payment(request(amount_minor=150_050, currency="HUF")))
    assert refused.value.code == "amount_not_representable"
    assert not fake.request_ids("/v2/checkout/orders")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("pp-vault-nofunds", "INSTRUMENT_DECLINED"),
        ("pp-vault-declined", "DECLINED"),
        ("pp-vault-unknown", "TOKEN_ID_NOT_FOUND"),
    ],
)
def test_declines_keep_paypals_issue(fake: FakePayPal, token: str, code: str) -> None:
    with pytest.raises(PaymentDeclined) as declined:
        asyncio.run(provider(fake).process_payment(request(token=token)))
    assert declined.value.code == code


def test_payer_action_required_is_pending_with_the_payers_link(fake: FakePayPal) -> None:
    outcome = asyncio.run(provider(fake).process_payment(request(token="pp-vault-payer-action")))
    assert outcome.status is OutcomeStatus.PENDING and outcome.code == "PAYER_ACTION_REQUIRED"
    assert (outcome.authorization_url or "").startswith("https://www.sandbox.paypal.com/")


def test_a_saved_card_source_goes_as_a_card_vault_id(fake: FakePayPal) -> None:
    asyncio.run(provider(fake, saved_payment_source="card").process_payment(request()))
    [capture] = [body for m, path, _, body in fake.requests if path.endswith("/capture")]
    assert capture["payment_source"] == {"card": {"vault_id": "pp-vault-good"}}


# --- webhooks ---------------------------------------------------------------------------------


def test_a_webhook_is_verified_on_the_exact_bytes_paypal_sent(fake: FakePayPal) -> None:
    """PayPal signs a CRC32 of the body as sent: the verification request carries those
    bytes, not a parse and dump of them (issue 34, item 3), so a body a round trip changes
    verifies, and the same event reformatted does not."""
    import json

    plugin = provider(fake)
    paid = request()
    asyncio.run(plugin.process_payment(paid))
    raw, headers = fake.webhook("PAYMENT.CAPTURE.COMPLETED", fake.capture_of(paid.reference))
    round_trip = json.dumps(json.loads(raw)).encode()
    assert round_trip != raw  # PayPal's own text: indented
    assert asyncio.run(plugin.parse_webhook(raw, headers)).reference == paid.reference
    with pytest.raises(WebhookSignatureError):
        asyncio.run(plugin.parse_webhook(round_trip, headers))


def test_a_certificate_url_that_is_not_paypals_is_refused_without_a_call(
    fake: FakePayPal,
) -> None:
    plugin = provider(fake)
    paid = request()
    asyncio.run(plugin.process_payment(paid))
    raw, headers = fake.webhook("PAYMENT.CAPTURE.COMPLETED", fake.capture_of(paid.reference))
    sent = len(fake.requests)
    for cert in (
        "https://evil.example/cert.pem",
        "http://api.paypal.com/cert",
        "https://paypal.com.evil.example/c",
    ):
        with pytest.raises(WebhookSignatureError, match="CERT-URL"):
            asyncio.run(plugin.parse_webhook(raw, {**headers, "PAYPAL-CERT-URL": cert}))
    assert len(fake.requests) == sent


def test_an_event_signed_for_another_webhook_is_refused(fake: FakePayPal) -> None:
    plugin = provider(fake)
    paid = request()
    asyncio.run(plugin.process_payment(paid))
    raw, headers = fake.webhook(
        "PAYMENT.CAPTURE.COMPLETED", fake.capture_of(paid.reference), webhook_id="8PT597110X687430L"
    )
    with pytest.raises(WebhookSignatureError):
        asyncio.run(plugin.parse_webhook(raw, headers))


class _Quiet:
    def publish(self, rows: Any) -> None:
        pass


@pytest.fixture
def ledger(sqlite_url: str, fake: FakePayPal) -> PaymentProcessor:
    registry = runtime.registry()
    registry.create_instance("paypal", config(fake), is_active=True)
    return PaymentProcessor(
        get_database(), registry, runtime.provider_loop(),
        InlineRelay(get_database(), _Quiet()), get_settings(),  # type: ignore[arg-type]
    )  # fmt: skip


def pay(ledger: PaymentProcessor, token: str | None) -> uuid.UUID:
    fields = _validated("o-5", "25.00", "USD", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(
        get_database(), fields, payment_token=token, box=ledger.registry.box
    )
    ledger.process(payment.id)
    return payment.id


def test_an_approval_webhook_captures_the_order_and_settles_the_payment(
    ledger: PaymentProcessor, fake: FakePayPal
) -> None:
    payment_id = pay(ledger, None)
    view = get_payment(payment_id)
    assert view.status.value == "pending"
    [order] = fake.orders_for(view.provider_reference)
    raw, headers = fake.webhook("CHECKOUT.ORDER.APPROVED", fake.approve(order["id"]))

    reply = receive_webhook("paypal", raw, headers, publisher=_Quiet())  # type: ignore[arg-type]
    assert reply.result is WebhookResult.APPLIED
    assert get_payment(payment_id).status.value == "succeeded"
    again = receive_webhook("paypal", raw, headers, publisher=_Quiet())  # type: ignore[arg-type]
    assert again.result is WebhookResult.DUPLICATE
    assert fake.charges_count(view.provider_reference) == 1


def test_a_refund_webhook_settles_the_pending_refund(
    ledger: PaymentProcessor, fake: FakePayPal
) -> None:
    fake.refunds_settle_later = True
    payment_id = pay(ledger, "pp-vault-good")
    assert get_payment(payment_id).status.value == "succeeded"
    pending = refund_payment(payment_id, Decimal("10.00"), publisher=_Quiet())  # type: ignore[arg-type]
    assert pending.status is RefundState.PENDING
    refund_id = str(pending.provider_refund_id)
    fake.settle_refund(refund_id)
    raw, headers = fake.webhook("PAYMENT.CAPTURE.REFUNDED", fake.refund_resource(refund_id))
    reply = receive_webhook("paypal", raw, headers, publisher=_Quiet())  # type: ignore[arg-type]
    assert reply.result is WebhookResult.APPLIED
    [settled] = list_refunds(payment_id)
    assert settled.status is RefundState.SUCCEEDED
    assert get_payment(payment_id).status.value == "partially_refunded"


def test_refunds_map_paypals_statuses(fake: FakePayPal) -> None:
    plugin = provider(fake)
    paid = request()
    order_id = asyncio.run(plugin.process_payment(paid)).provider_transaction_id
    fake.refunds_settle_later = True
    assert (
        asyncio.run(plugin.refund(paid.reference, 250, provider_id=order_id)).status
        is RefundStatus.PENDING
    )
    fake.refunds_settle_later = False
    whole = asyncio.run(plugin.refund(paid.reference, provider_id=order_id))
    assert whole.status is RefundStatus.SUCCEEDED and whole.amount_minor == 1000


def test_a_refund_repeated_under_its_key_is_one_refund(fake: FakePayPal) -> None:
    plugin = provider(fake)
    paid = request()
    order_id = asyncio.run(plugin.process_payment(paid)).provider_transaction_id
    first = asyncio.run(plugin.refund(paid.reference, 250, refund_key="rf-1", provider_id=order_id))
    again = asyncio.run(
        plugin.refund(paid.reference, 250, refund_key="rf-1", provider_id=order_id)
    )  # a retry
    other = asyncio.run(plugin.refund(paid.reference, 250, refund_key="rf-2", provider_id=order_id))
    assert first.refund_id == again.refund_id != other.refund_id
    assert fake.request_ids("/refund")[-1] == f"tender-{paid.reference}-refund-rf-2"


@pytest.mark.parametrize(
    ("issue", "status"),
    [("NOT_AUTHORIZED", 403), ("PAYEE_NOT_ENABLED_FOR_CARD_PROCESSING", 422)],
)
def test_an_account_refusal_is_neither_a_decline_nor_a_rejected_key(
    fake: FakePayPal, issue: str, status: int
) -> None:
    """A 403 (the app lacks a permission) or a 422 about the payee account charged nothing
    and leaves the key good: RequestRefused, for the next instance (issue 33, item 6)."""
    from providers.errors import RequestRefused

    plugin = provider(fake)
    fake.refuse_orders(issue)
    with pytest.raises(RequestRefused) as refused:
        asyncio.run(plugin.process_payment(request()))
    assert refused.value.code in (issue, "PERMISSION_DENIED")
    assert fake.account_refusal is not None and fake.account_refusal[0] == status
    fake.refuse_orders(None)
    assert asyncio.run(plugin.process_payment(request())).status is OutcomeStatus.SUCCEEDED


def test_verify_by_the_order_id_creates_nothing_after_paypal_forgot_the_request_id(
    fake: FakePayPal,
) -> None:
    """PayPal keeps request ids for 6 hours; a verify by create-order replay after that made
    a new "probe" order and read the payment as never sent (issue 33, item 1). With the
    order id the ledger holds, verify reads the order and creates nothing."""
    plugin = provider(fake)
    checkout = request(token=None)
    pending = asyncio.run(plugin.process_payment(checkout))
    order_id = pending.provider_transaction_id
    assert order_id
    fake.forget_request_ids()  # six hours on
    orders = fake.orders_count()
    waiting = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert waiting.status is OutcomeStatus.PENDING and fake.orders_count() == orders
    fake.approve(order_id)
    paid = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert paid.status is OutcomeStatus.SUCCEEDED and fake.orders_count() == orders
    assert fake.charges_count(checkout.reference) == 1


def test_a_refund_after_paypal_forgot_the_request_id_finds_the_order_by_id(
    fake: FakePayPal,
) -> None:
    """A refund more than 6 hours after the payment found no order (the create replay made
    a probe instead, issue 33, item 1): by the ledger's order id it refunds, creating none."""
    plugin = provider(fake)
    saved = request()
    paid = asyncio.run(plugin.process_payment(saved))
    fake.forget_request_ids()
    orders = fake.orders_count()
    refunded = asyncio.run(
        plugin.refund(
            saved.reference, refund_key="rf-late", provider_id=paid.provider_transaction_id
        )
    )
    assert refunded.amount_minor == saved.amount_minor and fake.orders_count() == orders


@pytest.mark.parametrize("issue", ["REDIRECT_PAYER_FOR_ALTERNATE_FUNDING", "PAYER_CANNOT_PAY"])
def test_a_capture_the_payer_can_fund_otherwise_leaves_the_checkout_payable(
    fake: FakePayPal, issue: str
) -> None:
    """Orders v2 answers a capture with REDIRECT_PAYER_FOR_ALTERNATE_FUNDING ("Redirect the
    payer to select another funding source"): on a checkout that is not a final decline
    but a payable order, with its link (issue 34, item 5)."""
    plugin = provider(fake)
    checkout = request(token=None)
    order_id = asyncio.run(plugin.process_payment(checkout)).provider_transaction_id
    assert order_id
    fake.approve(order_id)
    fake.capture_issue = issue
    again = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert again.status is OutcomeStatus.PENDING and again.authorization_url
    assert PayPalProvider.lifecycle.payable(again.provider_status or "") is True
    assert fake.charges_count(checkout.reference) == 0


def test_a_refund_paypal_is_still_working_on_is_unknown_not_failed(fake: FakePayPal) -> None:
    """409 PREVIOUS_REQUEST_IN_PROGRESS (Payments v2): the first refund call under this
    request id is still running and may complete, so the answer is unknown, never a
    failure that would release the amount for a second refund (issue 34, item 5)."""
    plugin = provider(fake)
    paid = request()
    order_id = asyncio.run(plugin.process_payment(paid)).provider_transaction_id
    fake.refund_in_progress = True
    with pytest.raises(OutcomeUnknown) as unknown:
        asyncio.run(plugin.refund(paid.reference, 250, refund_key="rf-busy", provider_id=order_id))
    assert unknown.value.code == "PREVIOUS_REQUEST_IN_PROGRESS"


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (None, DisputeStatus.OPEN),
        ("RESOLVED_BUYER_FAVOUR", DisputeStatus.LOST),
        ("ACCEPTED", DisputeStatus.LOST),
        ("RESOLVED_SELLER_FAVOUR", DisputeStatus.WON),
        ("RESOLVED_WITH_PAYOUT", DisputeStatus.WON),
        ("CANCELED_BY_BUYER", DisputeStatus.WON),
        ("NONE", DisputeStatus.OPEN),  # resolved, but nobody said who kept the money
    ],
)
def test_a_dispute_names_its_capture_and_the_plugin_reads_the_reference_from_it(
    fake: FakePayPal, outcome: str | None, expected: DisputeStatus
) -> None:
    """PayPal's dispute samples name the payment by its capture id only: the plugin reads
    the capture (GET /v2/payments/captures/{id}) for Tender's reference (its invoice_id)."""
    plugin = provider(fake)
    paid = request()
    asyncio.run(plugin.process_payment(paid))
    kind = "CUSTOMER.DISPUTE.CREATED" if outcome is None else "CUSTOMER.DISPUTE.RESOLVED"
    raw, headers = fake.webhook(kind, fake.dispute_resource(paid.reference, outcome=outcome))
    event = asyncio.run(plugin.parse_webhook(raw, headers))
    assert event.reference == paid.reference
    dispute = event.dispute
    assert dispute is not None and dispute.status is expected
    assert dispute.dispute_id == "PP-D-4012"
    assert dispute.amount_minor == paid.amount_minor and dispute.currency == paid.currency
    if outcome is None:
        assert (
            dispute.due_by is not None and dispute.reason == "MERCHANDISE_OR_SERVICE_NOT_RECEIVED"
        )


def test_after_the_payer_funds_otherwise_and_approves_again_the_capture_goes_through(
    fake: FakePayPal,
) -> None:
    """The capture after a second approval is a new request (its own PayPal-Request-Id),
    not a replay of the refusal PayPal stored under the first one's id."""
    plugin = provider(fake)
    checkout = request(token=None)
    order_id = asyncio.run(plugin.process_payment(checkout)).provider_transaction_id
    assert order_id
    fake.approve(order_id)
    fake.capture_issue = "REDIRECT_PAYER_FOR_ALTERNATE_FUNDING"
    first = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert first.status is OutcomeStatus.PENDING
    retried = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert retried.status is OutcomeStatus.PENDING  # same approval: the stored refusal

    fake.approve(order_id)  # the payer picks another funding source
    paid = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=order_id))
    assert paid.status is OutcomeStatus.SUCCEEDED
    assert fake.charges_count(checkout.reference) == 1


@pytest.mark.parametrize("status", ["FAILED", "CANCELLED"])
def test_a_refund_paypal_fails_or_cancels_is_failed_and_moves_no_money(
    fake: FakePayPal, status: str
) -> None:
    plugin = provider(fake)
    paid = request()
    order_id = asyncio.run(plugin.process_payment(paid)).provider_transaction_id
    fake.refund_status = status
    refused = asyncio.run(
        plugin.refund(paid.reference, 250, refund_key="rf-1", provider_id=order_id)
    )
    assert refused.status is RefundStatus.FAILED
    fake.refund_status = None
    whole = asyncio.run(plugin.refund(paid.reference, refund_key="rf-2", provider_id=order_id))
    assert whole.status is RefundStatus.SUCCEEDED and whole.amount_minor == paid.amount_minor


def test_a_capture_that_fails_at_paypal_is_a_failed_payment(fake: FakePayPal) -> None:
    """Orders v2 capture status FAILED ("There was an error while capturing payment"):
    no money moved, the payment failed."""
    plugin = provider(fake)
    paid = request()
    fake.capture_status = "FAILED"
    with pytest.raises(PaymentDeclined) as declined:
        asyncio.run(plugin.process_payment(paid))
    assert declined.value.code == "FAILED" and declined.value.provider_id
    assert fake.charges_count(paid.reference) == 0


@pytest.mark.parametrize(("ending", "status", "payment_status"), [
    ("COMPLETED", RefundState.SUCCEEDED, "partially_refunded"),
    ("FAILED", RefundState.FAILED, "succeeded"),
    ("CANCELLED", RefundState.FAILED, "succeeded"),
])  # fmt: skip
def test_reconcile_reads_a_pending_refund_back_and_settles_it_as_paypal_ended_it(
    ledger: PaymentProcessor,
    fake: FakePayPal,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
    status: RefundState,
    payment_status: str,
) -> None:
    """PayPal sends no webhook when a pending refund fails or is cancelled: reconcile
    reads it back by its id (GET /v2/payments/refunds/{id}) and ends it as PayPal did;
    a failed one gives its amount back to the refundable balance."""
    from config.settings import reset_settings
    from workers.payments import reconcile as reconcile_module

    fake.refunds_settle_later = True
    payment_id = pay(ledger, "pp-vault-good")
    pending = refund_payment(payment_id, Decimal("10.00"), publisher=_Quiet())  # type: ignore[arg-type]
    assert pending.status is RefundState.PENDING

    def run_reconcile() -> None:
        reconcile_module.reconcile(
            get_database(), runtime.registry(), runtime.provider_loop(), _Quiet(),  # type: ignore[arg-type]
            get_settings(), enqueue=lambda _: True,
        )  # fmt: skip

    run_reconcile()  # checked too soon: the hourly interval has not passed
    [still] = list_refunds(payment_id)
    assert still.status is RefundState.PENDING
    monkeypatch.setenv("TENDER_REFUND_CHECK_INTERVAL_S", "0.01")
    reset_settings()
    time.sleep(0.05)
    run_reconcile()  # PayPal still has it pending: it stays so
    assert list_refunds(payment_id)[0].status is RefundState.PENDING

    fake.settle_refund(str(pending.provider_refund_id), ending)
    time.sleep(0.05)
    run_reconcile()
    [ended] = list_refunds(payment_id)
    assert ended.status is status
    assert get_payment(payment_id).status.value == payment_status
    reset_settings()


def test_the_fakes_events_have_the_shape_of_paypals_samples(fake: FakePayPal) -> None:
    """The fake sends PayPal's envelope and capture fields as PayPal's published samples
    have them (tests/fixtures/webhooks/paypal/SOURCES.md), and the plugin reads its
    reference from the capture's invoice_id, not from anything the sample lacks."""
    import json
    from pathlib import Path

    samples = Path(__file__).parents[1] / "fixtures" / "webhooks" / "paypal"
    completed = json.loads((samples / "PAYMENT.CAPTURE.COMPLETED.json").read_text())
    plugin = provider(fake)
    paid = request()
    asyncio.run(plugin.process_payment(paid))
    raw, headers = fake.webhook("PAYMENT.CAPTURE.COMPLETED", fake.capture_of(paid.reference))
    sent = json.loads(raw)
    assert set(sent) == set(completed)
    # processor_response is a card payment's; the fake's vaulted wallet has none
    assert set(completed["resource"]) - {"processor_response"} <= set(sent["resource"])
    assert asyncio.run(plugin.parse_webhook(raw, headers)).reference == paid.reference

    created = json.loads((samples / "CUSTOMER.DISPUTE.CREATED.json").read_text())
    raw, _ = fake.webhook("CUSTOMER.DISPUTE.CREATED", fake.dispute_resource(paid.reference))
    assert set(json.loads(raw)) == set(created)
