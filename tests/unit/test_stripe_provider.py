"""The Stripe plugin's own rules beyond the conformance suite: Stripe's amount rules, its
idempotency keys, 3-D Secure, and verify's eventual consistency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from providers.base import (
    DisputeStatus,
    OutcomeStatus,
    PaymentRequest,
    RefundStatus,
    derive_reference,
)
from providers.errors import OutcomeUnknown, ProviderUnavailable
from providers.stripe import StripeProvider, from_stripe_amount, to_stripe_amount
from tests.fakes.stripe.server import FakeStripe, decode_form


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as running:
        yield running


def provider(fake: FakeStripe) -> StripeProvider:
    plugin = StripeProvider()
    plugin.configure(
        {
            "secret_key": fake.secret_key,
            "webhook_secret": fake.webhook_secret,
            "base_url": fake.base_url,
            "timeout_s": 2,
        }
    )
    return plugin


def request(token: str | None = "pm_card_visa", **fields: Any) -> PaymentRequest:
    values: dict[str, Any] = {
        "payment_id": uuid.uuid4(),
        "reference": derive_reference(str(uuid.uuid4())),
        "order_id": "order-7",
        "amount_minor": 1250,
        "currency": "USD",
        "customer_email": "ada@example.com",
        "payment_token": token,
    }
    return PaymentRequest(**(values | fields))


@pytest.mark.parametrize(
    ("minor", "currency", "stripe_amount"),
    [
        (1250, "USD", 1250),
        (500, "JPY", 500),
        (500, "ISK", 50_000),
        (5120, "KWD", 5120),
        (5, "UGX", 500),  # Stripe's own example: "to charge 5 UGX, provide ... 500"
    ],
)
def test_amounts_follow_stripes_rules_both_ways(
    minor: int, currency: str, stripe_amount: int
) -> None:
    assert to_stripe_amount(minor, currency) == stripe_amount
    assert from_stripe_amount(stripe_amount, currency.lower()) == minor


def test_an_amount_stripe_cannot_carry_exactly_is_refused_before_sending(fake: FakeStripe) -> None:
    with pytest.raises(ProviderUnavailable, match=r"steps of 0\.010"):
        asyncio.run(provider(fake).process_payment(request(amount_minor=5124, currency="KWD")))
    assert fake.requests == []


def test_every_charge_carries_an_idempotency_key_and_the_reference(fake: FakeStripe) -> None:
    plugin = provider(fake)
    req = request()
    asyncio.run(plugin.process_payment(req))
    method, path, form = fake.requests[-1]
    assert (method, path) == ("POST", "/v1/payment_intents")
    assert form["metadata"]["tender_reference"] == req.reference
    assert form["amount"] == "1250" and form["currency"] == "usd" and form["confirm"] == "true"
    assert asyncio.run(plugin.process_payment(req)).status is OutcomeStatus.SUCCEEDED
    assert fake.charges_count(req.reference) == 1  # the same key: Stripe's first answer


def test_a_reused_key_with_other_parameters_is_a_bug_report_not_a_charge(fake: FakeStripe) -> None:
    plugin = provider(fake)
    first = request()
    asyncio.run(plugin.process_payment(first))
    with pytest.raises(OutcomeUnknown) as reused:
        asyncio.run(plugin.process_payment(request(reference=first.reference, amount_minor=999)))
    assert reused.value.code == "idempotency_error"
    assert fake.charges_count(first.reference) == 1


def test_three_d_secure_is_pending_with_the_action_url(fake: FakeStripe) -> None:
    outcome = asyncio.run(provider(fake).process_payment(request("pm_card_authenticationRequired")))
    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.authorization_url and "3d_secure" in outcome.authorization_url


def test_not_found_by_search_is_unknown_never_not_charged(fake: FakeStripe) -> None:
    with pytest.raises(OutcomeUnknown, match="searchable"):
        asyncio.run(provider(fake).verify_payment(derive_reference("never-sent")))


def test_partial_refunds_have_keys_of_their_own(fake: FakeStripe) -> None:
    """Each refund's Idempotency-Key comes from Tender's refund id: two equal partial
    refunds are two refunds at Stripe, and a retry of one replays it."""
    plugin = provider(fake)
    req = request()
    asyncio.run(plugin.process_payment(req))
    first = asyncio.run(plugin.refund(req.reference, 250, refund_key="rf-first"))
    second = asyncio.run(plugin.refund(req.reference, 250, refund_key="rf-second"))
    retried = asyncio.run(plugin.refund(req.reference, 250, refund_key="rf-first"))
    keys = [key for path, key in fake.idempotency_keys if path == "/v1/refunds"]
    assert len(keys) == 3 and all(keys)
    assert keys[0] != keys[1] and keys[2] == keys[0]
    assert first.refund_id != second.refund_id and retried.refund_id == first.refund_id
    assert fake._refunded[fake.intent_for(req.reference)["id"]] == 500


def test_the_fake_decodes_stripes_bracket_notation() -> None:
    form = decode_form("a[b]=1&line_items[0][price_data][currency]=usd&line_items[0][quantity]=1")
    assert form == {
        "a": {"b": "1"},
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "1"}],
    }


def test_a_declined_attempt_in_checkout_is_not_final_and_the_next_card_pays(
    fake: FakeStripe,
) -> None:
    """Stripe returns the intent to ``requires_payment_method`` after a failed attempt and
    Checkout lets the customer try another card
    (https://docs.stripe.com/payments/paymentintents/lifecycle): the decline's webhook
    changes nothing, and the later success is the payment's outcome (issue 33, item 2)."""
    plugin = provider(fake)
    checkout = request(token=None)
    pending = asyncio.run(plugin.process_payment(checkout))
    assert pending.status is OutcomeStatus.PENDING

    declined = fake.fail_checkout_attempt(checkout.reference)
    raw, headers = fake.webhook("payment_intent.payment_failed", declined)
    event = asyncio.run(plugin.parse_webhook(raw, headers))
    assert event.reference == checkout.reference and event.status is None  # still payable
    assert asyncio.run(plugin.verify_payment(checkout.reference)).status is OutcomeStatus.PENDING

    session = fake.complete_checkout(checkout.reference)
    raw, headers = fake.webhook("checkout.session.completed", session)
    paid = asyncio.run(plugin.parse_webhook(raw, headers))
    assert paid.status is OutcomeStatus.SUCCEEDED and paid.amount_minor == checkout.amount_minor
    verified = asyncio.run(plugin.verify_payment(checkout.reference))
    assert verified.status is OutcomeStatus.SUCCEEDED


def test_a_declined_saved_card_is_final(fake: FakeStripe) -> None:
    """Off the checkout page nobody is there to try another card: the same Stripe status
    (``requires_payment_method``) means the payment failed."""
    from providers.errors import PaymentDeclined

    plugin = provider(fake)
    saved = request(token="pm_card_chargeDeclined")
    with pytest.raises(PaymentDeclined):
        asyncio.run(plugin.process_payment(saved))
    intent = fake.intent_for(saved.reference)
    assert intent["status"] == "requires_payment_method"
    raw, headers = fake.webhook("payment_intent.payment_failed", intent)
    assert asyncio.run(plugin.parse_webhook(raw, headers)).status is OutcomeStatus.FAILED
    assert asyncio.run(plugin.verify_payment(saved.reference)).status is OutcomeStatus.FAILED


def test_verify_reads_a_checkout_by_its_session_id_while_search_lags(fake: FakeStripe) -> None:
    """Stripe's search is eventually consistent ("data is searchable in less than a minute",
    https://docs.stripe.com/search#data-freshness): with the Checkout Session id the ledger
    holds, verify reads the session and its PaymentIntent by id (issue 33, item 4)."""
    plugin = provider(fake)
    fake.search_lag_s = 3600  # nothing is searchable during this test
    checkout = request(token=None)
    pending = asyncio.run(plugin.process_payment(checkout))
    session_id = pending.provider_transaction_id
    assert session_id and session_id.startswith("cs_")
    open_session = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=session_id))
    assert open_session.status is OutcomeStatus.PENDING
    fake.complete_checkout(checkout.reference)
    paid = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=session_id))
    assert paid.status is OutcomeStatus.SUCCEEDED and paid.amount_minor == checkout.amount_minor
    with pytest.raises(OutcomeUnknown):  # without the id, the lagging search finds nothing
        asyncio.run(plugin.verify_payment(checkout.reference))


def test_a_refund_right_after_the_payment_finds_it_by_id_while_search_lags(
    fake: FakeStripe,
) -> None:
    """A refund found its payment through the lagging Search API and was refused right
    after the charge (issue 33, item 4): with the ledger's id it is read at once."""
    plugin = provider(fake)
    fake.search_lag_s = 3600
    paid_with_card = request()
    paid = asyncio.run(plugin.process_payment(paid_with_card))
    refunded = asyncio.run(
        plugin.refund(
            paid_with_card.reference,
            500,
            refund_key="rf-at-once",
            provider_id=paid.provider_transaction_id,
        )
    )
    assert refunded.amount_minor == 500
    checkout = request(token=None)
    session = asyncio.run(plugin.process_payment(checkout))
    fake.complete_checkout(checkout.reference)
    whole = asyncio.run(
        plugin.refund(checkout.reference, provider_id=session.provider_transaction_id)
    )
    assert whole.amount_minor == checkout.amount_minor


def test_an_expired_checkout_is_ended_at_stripe_and_then_reads_failed(fake: FakeStripe) -> None:
    """At its expiry Tender ends the Checkout Session with Stripe's expire call ("after it
    expires, a customer can't complete a Checkout Session",
    https://docs.stripe.com/api/checkout/sessions/expire); a session a declined attempt
    left open is then failed, not pending (issue 33)."""
    from tests.fakes.stripe.server import CheckoutClosed

    plugin = provider(fake)
    checkout = request(token=None)
    pending = asyncio.run(plugin.process_payment(checkout))
    session_id = pending.provider_transaction_id
    fake.fail_checkout_attempt(checkout.reference)
    assert asyncio.run(plugin.expire_checkout(checkout.reference, provider_id=session_id))
    with pytest.raises(CheckoutClosed):  # the customer can no longer pay it
        fake.complete_checkout(checkout.reference)
    ended = asyncio.run(plugin.verify_payment(checkout.reference, provider_id=session_id))
    assert ended.status is OutcomeStatus.FAILED and ended.code == "expired"
    # a second expire (a reconcile run repeated) is Stripe's 400, answered "not ended now"
    assert not asyncio.run(plugin.expire_checkout(checkout.reference, provider_id=session_id))


def test_a_checkout_that_lapsed_by_itself_reads_failed_and_a_paid_one_is_not_ended(
    fake: FakeStripe,
) -> None:
    plugin = provider(fake)
    lapsed = request(token=None)
    session_id = asyncio.run(plugin.process_payment(lapsed)).provider_transaction_id
    fake.lapse_checkout(lapsed.reference)
    assert not asyncio.run(plugin.expire_checkout(lapsed.reference, provider_id=session_id))
    verified = asyncio.run(plugin.verify_payment(lapsed.reference, provider_id=session_id))
    assert verified.status is OutcomeStatus.FAILED

    paid = request(token=None)
    session_id = asyncio.run(plugin.process_payment(paid)).provider_transaction_id
    fake.complete_checkout(paid.reference)
    assert not asyncio.run(plugin.expire_checkout(paid.reference, provider_id=session_id))
    verified = asyncio.run(plugin.verify_payment(paid.reference, provider_id=session_id))
    assert verified.status is OutcomeStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("action", "field", "url"),
    [
        ("redirect_to_url", "url", "https://hooks.stripe.com/3d_secure_2/hosted?x=1"),
        (
            "display_bank_transfer_instructions",
            "hosted_instructions_url",
            "https://payments.stripe.com/bank_transfers/instructions/test_1",
        ),
        (
            "verify_with_microdeposits",
            "hosted_verification_url",
            "https://payments.stripe.com/microdeposit/pacs_test_1",
        ),
        ("oxxo_display_details", "hosted_voucher_url", "https://payments.stripe.com/oxxo/v_1"),
    ],
)
def test_every_next_action_with_a_hosted_page_gives_billing_its_url(
    action: str, field: str, url: str
) -> None:
    """A pending payment must carry what the customer has to do (issue 34, item 6): each
    next_action type Stripe documents with a hosted page gives that page."""
    import stripe

    from providers.stripe import next_action_url

    next_action = stripe.StripeObject.construct_from({"type": action, action: {field: url}}, "k")
    assert next_action_url(next_action) == (action, url)
    sdk = stripe.StripeObject.construct_from({"type": "use_stripe_sdk", "use_stripe_sdk": {}}, "k")
    assert next_action_url(sdk) == ("use_stripe_sdk", None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("pending", RefundStatus.PENDING),
        ("requires_action", RefundStatus.PENDING),
        ("succeeded", RefundStatus.SUCCEEDED),
        ("failed", RefundStatus.FAILED),
        ("canceled", RefundStatus.FAILED),
    ],
)
def test_every_refund_status_stripe_documents_has_its_meaning(
    fake: FakeStripe, status: str, expected: RefundStatus
) -> None:
    plugin = provider(fake)
    paid_with_card = request()
    paid = asyncio.run(plugin.process_payment(paid_with_card))
    fake.refund_status = status
    refunded = asyncio.run(
        plugin.refund(
            paid_with_card.reference, 250, refund_key=f"rf-{status}",
            provider_id=paid.provider_transaction_id, currency="USD",
        )
    )  # fmt: skip
    assert refunded.status is expected


def test_a_refund_that_fails_after_it_succeeded_arrives_as_a_failed_refund(
    fake: FakeStripe,
) -> None:
    """Stripe's refund.failed, after the refund had succeeded (issue 34, item 2): the
    webhook names the refund and says failed; the ledger then takes it back."""
    plugin = provider(fake)
    paid_with_card = request()
    paid = asyncio.run(plugin.process_payment(paid_with_card))
    refunded = asyncio.run(
        plugin.refund(
            paid_with_card.reference, 250, refund_key="rf-late",
            provider_id=paid.provider_transaction_id, currency="USD",
        )
    )  # fmt: skip
    assert refunded.status is RefundStatus.SUCCEEDED and refunded.refund_id
    raw, headers = fake.webhook("refund.failed", fake.fail_refund(refunded.refund_id))
    event = asyncio.run(plugin.parse_webhook(raw, headers))
    assert event.refund is not None and event.refund.status is RefundStatus.FAILED
    assert event.refund.refund_id == refunded.refund_id and event.refund.amount_minor == 250


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("warning_needs_response", DisputeStatus.OPEN),
        ("needs_response", DisputeStatus.OPEN),
        ("under_review", DisputeStatus.OPEN),
        ("appeal_under_review", DisputeStatus.OPEN),
        ("won", DisputeStatus.WON),
        ("warning_closed", DisputeStatus.WON),
        ("lost", DisputeStatus.LOST),
        ("prevented", DisputeStatus.LOST),
    ],
)
def test_a_dispute_names_the_payment_through_its_payment_intent(
    fake: FakeStripe, status: str, expected: DisputeStatus
) -> None:
    """A Dispute carries its PaymentIntent's id, not Tender's reference (Stripe's example
    Dispute, fixtures3.json): the plugin reads the reference from that intent."""
    plugin = provider(fake)
    paid_with_card = request()
    asyncio.run(plugin.process_payment(paid_with_card))
    raw, headers = fake.webhook(
        f"charge.dispute.{'created' if expected is DisputeStatus.OPEN else 'closed'}",
        fake.dispute(paid_with_card.reference, status),
    )
    event = asyncio.run(plugin.parse_webhook(raw, headers))
    assert event.reference == paid_with_card.reference
    dispute = event.dispute
    assert dispute is not None and dispute.status is expected
    assert dispute.dispute_id.startswith("dp_") and dispute.provider_status == status
    assert dispute.amount_minor == paid_with_card.amount_minor and dispute.currency == "USD"
    assert dispute.due_by is not None and dispute.reason == "general"


def test_a_pending_intent_carries_the_secret_or_the_bank_details_billing_must_show() -> None:
    """use_stripe_sdk has no page: billing gets the intent's client_secret for Stripe.js;
    display_bank_transfer_instructions gives the account, the reference and the amount due
    (the shapes of https://docs.stripe.com/api/payment_intents/object#payment_intent_object-next_action)."""
    import stripe

    from providers.stripe import customer_action

    def intent(next_action: dict[str, Any]) -> Any:
        return stripe.StripeObject.construct_from(
            {
                "id": "pi_1",
                "status": "requires_action",
                "client_secret": "pi_1_secret_abc",
                "next_action": next_action,
            },
            "k",
        )

    sdk = customer_action(intent({"type": "use_stripe_sdk", "use_stripe_sdk": {}}))
    assert sdk is not None and sdk.type == "use_stripe_sdk"
    assert sdk.client_secret == "pi_1_secret_abc" and sdk.url is None
    transfer = customer_action(
        intent(
            {
                "type": "display_bank_transfer_instructions",
                "display_bank_transfer_instructions": {
                    "amount_remaining": 1099,
                    "currency": "eur",
                    "financial_addresses": [
                        {
                            "type": "iban",
                            "iban": {
                                "account_holder_name": "Stripe Technology Europe Limited",
                                "bic": "SXPYDEHH",
                                "country": "DE",
                                "iban": "DE00000000000000000001",
                            },
                            "supported_networks": ["sepa"],
                        }
                    ],
                    "hosted_instructions_url": "https://payments.stripe.com/bank_transfers/x",
                    "reference": "ABCD-EFGH-IJKL",
                    "type": "eu_bank_transfer",
                },
            }
        )
    )
    assert transfer is not None and transfer.client_secret is None
    assert transfer.url == "https://payments.stripe.com/bank_transfers/x"
    assert transfer.bank_transfer == {
        "type": "eu_bank_transfer",
        "reference": "ABCD-EFGH-IJKL",
        "currency": "eur",
        "amount_remaining": "10.99",
        "iban.account_holder_name": "Stripe Technology Europe Limited",
        "iban.bic": "SXPYDEHH",
        "iban.country": "DE",
        "iban.iban": "DE00000000000000000001",
    }


def test_a_saved_method_is_charged_with_its_customer_off_session(fake: FakeStripe) -> None:
    """A saved PaymentMethod is charged with the Customer it is attached to, off-session
    (merchant-initiated; https://docs.stripe.com/payments/save-and-reuse)."""
    plugin = provider(fake)
    saved = request(customer_id="cus_Q1abc", off_session=True)
    outcome = asyncio.run(plugin.process_payment(saved))
    assert outcome.status is OutcomeStatus.SUCCEEDED
    created = [form for method, path, form in fake.requests if path == "/v1/payment_intents"]
    assert created[-1]["customer"] == "cus_Q1abc" and created[-1]["off_session"] == "true"
    assert "return_url" not in created[-1]


def test_an_amount_over_stripes_digit_limit_is_refused_before_sending(fake: FakeStripe) -> None:
    """Stripe's amount has at most 8 digits for most currencies (docs.stripe.com/
    currencies, maximum charge amounts): 1,000,000.00 USD is refused before sending, as
    not charged (another provider may take it); 999,999.99 goes."""
    assert to_stripe_amount(99_999_999, "USD") == 99_999_999
    with pytest.raises(ProviderUnavailable, match="at most 99999999"):
        to_stripe_amount(100_000_000, "USD")
    assert to_stripe_amount(999_999_999_999, "IDR") == 999_999_999_999
    with pytest.raises(ProviderUnavailable):
        asyncio.run(provider(fake).process_payment(request(amount_minor=100_000_000)))
    assert fake.requests == []


@pytest.mark.parametrize(
    ("token", "code", "kind"),
    [
        ("pm_card_chargeDeclined", "generic_decline", "hard"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds", "hard"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "outage"),
    ],
)
def test_a_decline_carries_stripes_code_and_its_kind_from_the_decline_table(
    fake: FakeStripe, token: str, code: str, kind: str
) -> None:
    """Issue 37: the processor retries soft and outage declines only; the kind comes from
    Stripe's decline codes page (https://docs.stripe.com/declines/codes), the test cards
    from https://docs.stripe.com/testing#declined-payments."""
    from providers.errors import PaymentDeclined

    plugin = provider(fake)
    with pytest.raises(PaymentDeclined) as declined:
        asyncio.run(plugin.process_payment(request(token=token)))
    assert declined.value.code == code
    assert type(plugin).decline_kind(code).value == kind
