"""Stripe, through the official ``stripe`` SDK (``StripeClient``, its async methods over httpx).

* **One client per instance**, with the instance's key, ``max_network_retries=0`` (Tender
  owns retries: a retried charge must be a decision, not a library default) and the base
  address configurable so tests reach a local fake.
* **Charges.** With a saved payment method (``payment_token``): a PaymentIntent created and
  confirmed at once -> succeeded, ``requires_action`` (pending, with the action's URL), or a
  card error (declined, with Stripe's ``decline_code``). Without one: a Checkout Session in
  payment mode -> pending, its URL as ``authorization_url``.
* **At most once.** Every mutating call carries an ``Idempotency-Key`` derived from the
  payment reference and the operation, so a retried call returns Stripe's first answer
  instead of charging again; the reference also travels in ``metadata`` so that a payment
  can be found later.
* **Verify** searches PaymentIntents by that metadata. Stripe's search is eventually
  consistent (its docs: data is usually searchable within a minute) and an open Checkout
  has no PaymentIntent until the customer pays, so *not found* is never "not charged":
  it is :class:`OutcomeUnknown`, and the payment waits for a webhook or a later verify.
* **Money.** Stripe's amounts follow ISO minor units except ISK (two decimals at Stripe,
  none in ISO: amount x 100) and the three-decimal currencies (the last digit must be 0).
  An amount Stripe cannot carry exactly is refused before sending; nothing is rounded.
* **Errors** are classified at one seam, by what is safe next (``_classify``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import httpx
import stripe
from pydantic import Field, SecretStr, field_validator

from providers.base import (
    Capability,
    CustomerAction,
    Decline,
    DeclineKind,
    DisputeOutcome,
    DisputeStatus,
    HealthCheck,
    Lifecycle,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
    RefundStatus,
    SavedMethod,
    Stage,
    WebhookEvent,
    load_json,
    probe_health,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderUnavailable,
    RequestRefused,
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.money import MoneyError, ProviderUnits, Unit, exponent, from_minor

logger = logging.getLogger(__name__)
T = TypeVar("T")

REFERENCE_KEY = "tender_reference"  # the metadata key a payment is found by
SLOW_HEALTH_FRACTION = 0.8  # of timeout_s: a health check slower than this is DEGRADED
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# ISO: no decimals; Stripe: written with two, whole units only. "ISK transitioned to a
# zero-decimal currency, but backwards compatibility requires you to represent it as a
# two-decimal value ... to charge 5 ISK, provide an amount value of 500"; the same words
# for UGX (docs.stripe.com/currencies, "Special cases"). UGX was sent as 5 for 5 UGX: a
# hundredth of the price.
TWO_DECIMAL_AT_STRIPE = frozenset({"ISK", "UGX"})
STRIPE_CURRENCIES = frozenset(
    [
        "AED",
        "AUD",
        "BGN",
        "BHD",
        "BIF",
        "BRL",
        "CAD",
        "CHF",
        "CLP",
        "COP",
        "CZK",
        "DJF",
        "DKK",
        "EGP",
        "EUR",
        "GBP",
        "GHS",
        "GNF",
        "HKD",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "ISK",
        "JOD",
        "JPY",
        "KES",
        "KMF",
        "KRW",
        "KWD",
        "MAD",
        "MXN",
        "MYR",
        "NGN",
        "NOK",
        "NZD",
        "OMR",
        "PEN",
        "PHP",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RWF",
        "SAR",
        "SEK",
        "SGD",
        "THB",
        "TND",
        "TRY",
        "TWD",
        "TZS",
        "UGX",
        "USD",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
        "ZAR",
    ]
)


class StripeConfig(ProviderConfig):
    """One Stripe account.

    Parameters:
        secret_key: ``sk_live_...``, ``sk_test_...`` or a restricted ``rk_...`` key.
        webhook_secret: the endpoint's ``whsec_...`` signing secret.
        publishable_key: ``pk_...``, for front-end surfaces; not used server-side.
        statement_descriptor: the suffix customers see on their statement (at most 22).
        return_url: where a customer lands after a redirect (3-D Secure, Checkout).
        base_url: Stripe's API root (a local fake in tests).
        timeout_s: seconds one API call may take.
        webhook_tolerance_s: how old a signed webhook may be (replays are refused).
    """

    secret_key: SecretStr
    webhook_secret: SecretStr
    publishable_key: str | None = None
    statement_descriptor: str | None = Field(default=None, max_length=22)
    return_url: str = "https://example.com/paid"
    base_url: str = "https://api.stripe.com"
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhook_tolerance_s: int = Field(default=300, ge=1, le=3600)

    @field_validator("secret_key")
    @classmethod
    def _secret_key_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("must be a Stripe secret or restricted key (sk_... or rk_...)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must be a Stripe webhook signing secret (whsec_...)")
        return value

    @field_validator("publishable_key")
    @classmethod
    def _publishable_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("pk_"):
            raise ValueError("must be a Stripe publishable key (pk_...)")
        return value

    @field_validator("base_url", "return_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


# --- money at Stripe's seam ----------------------------------------------------------------


# Stripe's units (https://docs.stripe.com/currencies#zero-decimal, #three-decimal, #special-
# cases): ISO's, except ISK, which Stripe writes with two decimals in whole krónur, and the
# three-decimal currencies, whose last digit must be 0.
_UNITS_SOURCE = "https://docs.stripe.com/currencies"
# "The amount value supports up to ... 12 digits for IDR ... 9 digits for INR ... 8 digits
# for all other currencies"; card payments allow more in LBP (11+ digits), COP, HUF and JPY
# (docs.stripe.com/currencies, "Minimum and maximum charge amounts"): the card figures are
# kept for those, so no card payment Stripe takes is refused here.
_STRIPE_MAXIMUM = {
    "IDR": 999_999_999_999,
    "INR": 999_999_999,
    "LBP": 99_999_999_999_999,
    "COP": 9_999_999_999_999,
    "HUF": 9_999_999_999_999,
    "JPY": 9_999_999_999_999,
}
STRIPE_UNITS = ProviderUnits(
    "stripe",
    {
        code: Unit(
            2 if code in TWO_DECIMAL_AT_STRIPE else exponent(code),
            _UNITS_SOURCE,
            step=10 if code in THREE_DECIMAL else 1,
            maximum=_STRIPE_MAXIMUM.get(code, 99_999_999),
        )
        for code in sorted(STRIPE_CURRENCIES)
    },
)


def to_stripe_amount(amount_minor: int, currency: str) -> int:
    """Tender's ISO minor units as Stripe's ``amount``; ProviderUnavailable (nothing sent)
    if Stripe cannot carry the amount exactly: it is never rounded."""
    try:
        return STRIPE_UNITS.to_provider(amount_minor, currency)
    except MoneyError as exc:  # not sent, so provably not charged: another may carry it
        raise ProviderUnavailable(
            str(exc), provider="stripe", code="amount_not_representable"
        ) from None


def _metadata_of(intent: Any) -> dict[str, Any]:
    """An SDK PaymentIntent's metadata as a plain dict (the SDK wraps it in a StripeObject)."""
    metadata = getattr(intent, "metadata", None)
    return metadata.to_dict() if metadata is not None else {}


def from_stripe_amount(amount: int, currency: str) -> int:
    """Stripe's ``amount`` as ISO minor units."""
    return STRIPE_UNITS.from_provider(amount, currency.upper())


# --- the provider ----------------------------------------------------------------------------

# A PaymentIntent's status as Tender's outcome, by the flow that made the intent: Stripe's
# PaymentIntent lifecycle (https://docs.stripe.com/payments/paymentintents/lifecycle).
# "After a failed payment attempt, the PaymentIntent returns to requires_payment_method":
# on a Checkout page the customer can still try another card until the session expires
# (https://docs.stripe.com/api/checkout/sessions/object#checkout_session_object-expires_at),
# so it is not final; on a saved method charged off-session nobody is there to, so it is.
FLOW_KEY = "tender_flow"  # metadata: "checkout" or "saved"
_LIFECYCLE_DOC = "https://docs.stripe.com/payments/paymentintents/lifecycle"
_DECLINES_DOC = "https://docs.stripe.com/declines/codes"
# Stripe's decline codes by what its "next steps" column says. Soft: "the payment should
# be attempted again" (or "ask the customer to attempt the payment again"); outage: the
# issuer or Stripe could not process it. Every other code asks the customer or their
# issuer to act, or is final (insufficient funds, lost or stolen card): hard.
STRIPE_DECLINES: Mapping[str, Decline] = {
    **{
        code: Decline(DeclineKind.SOFT, f"{_DECLINES_DOC} ({code})")
        for code in ("approve_with_id", "reenter_transaction", "try_again_later")
    },
    **{
        code: Decline(DeclineKind.OUTAGE, f"{_DECLINES_DOC} ({code})")
        for code in ("issuer_not_available", "processing_error")
    },
    **{
        code: Decline(DeclineKind.HARD, f"{_DECLINES_DOC} ({code})")
        for code in (
            "authentication_required", "call_issuer", "card_not_supported",
            "card_velocity_exceeded", "currency_not_supported", "do_not_honor",
            "do_not_try_again", "duplicate_transaction", "expired_card", "fraudulent",
            "generic_decline", "incorrect_cvc", "incorrect_number", "incorrect_pin",
            "incorrect_zip", "insufficient_funds", "invalid_account", "invalid_amount",
            "invalid_cvc", "invalid_expiry_month", "invalid_expiry_year", "invalid_number",
            "invalid_pin", "lost_card", "merchant_blacklist", "new_account_information_available",
            "no_action_taken", "not_permitted", "offline_pin_required",
            "online_or_offline_pin_required", "pickup_card", "pin_try_exceeded",
            "restricted_card", "revocation_of_all_authorizations",
            "revocation_of_authorization", "security_violation", "service_not_allowed",
            "stolen_card", "stop_payment_order", "testmode_decline", "transaction_not_allowed",
            "withdrawal_count_limit_exceeded", "card_declined",
        )
    },
}  # fmt: skip
_EXPIRE_DOC = "https://docs.stripe.com/api/checkout/sessions/expire"
LIFECYCLE = Lifecycle(
    (
        Stage("succeeded", OutcomeStatus.SUCCEEDED, _LIFECYCLE_DOC),
        Stage("processing", OutcomeStatus.PENDING, _LIFECYCLE_DOC),
        Stage("requires_action", OutcomeStatus.PENDING, _LIFECYCLE_DOC, payable=True),
        Stage("requires_confirmation", OutcomeStatus.PENDING, _LIFECYCLE_DOC, payable=True),
        Stage("requires_capture", OutcomeStatus.PENDING, _LIFECYCLE_DOC),
        # after a failed attempt: the Checkout page takes another card; nobody off-session
        Stage(
            "requires_payment_method",
            OutcomeStatus.PENDING,
            _LIFECYCLE_DOC,
            flows=("checkout",),
            payable=True,
        ),
        Stage("requires_payment_method", OutcomeStatus.FAILED, _LIFECYCLE_DOC, flows=("saved",)),
        Stage("canceled", OutcomeStatus.FAILED, _LIFECYCLE_DOC),
        # a Checkout Session before its first attempt (it has no PaymentIntent yet)
        Stage("open", OutcomeStatus.PENDING, _EXPIRE_DOC, flows=("checkout",), payable=True),
        Stage("expired", OutcomeStatus.FAILED, _EXPIRE_DOC, flows=("checkout",)),
    )
)
_PI_STATUS: dict[str, dict[str, OutcomeStatus]] = {
    flow: LIFECYCLE.table(flow) for flow in ("checkout", "saved")
}


# What the customer must do for a PaymentIntent in requires_action, by next_action.type:
# the hosted page Stripe gives for it (PaymentIntent object, next_action:
# https://docs.stripe.com/api/payment_intents/object#payment_intent_object-next_action).
# use_stripe_sdk has none: billing completes it with Stripe.js and the intent's
# client_secret (read with the PaymentIntent id, the payment's provider id).
_NEXT_ACTION_URLS = {
    "redirect_to_url": "url",
    "display_bank_transfer_instructions": "hosted_instructions_url",
    "verify_with_microdeposits": "hosted_verification_url",
    "boleto_display_details": "hosted_voucher_url",
    "konbini_display_details": "hosted_voucher_url",
    "multibanco_display_details": "hosted_voucher_url",
    "oxxo_display_details": "hosted_voucher_url",
}
_ACTION_MESSAGES = {
    "use_stripe_sdk": "complete the action with Stripe.js using the PaymentIntent's "
    "client_secret (read it by the payment's provider_transaction_id)",
}


def next_action_url(next_action: Any) -> tuple[str | None, str | None]:
    """A requires_action intent's ``next_action``: (its type, the page to send the
    customer to, when Stripe gives one)."""
    action_type = getattr(next_action, "type", None)
    field = _NEXT_ACTION_URLS.get(str(action_type))
    details = getattr(next_action, str(action_type), None) if field else None
    url = getattr(details, field, None) if field and details is not None else None
    return (str(action_type) if action_type else None), (str(url) if url else None)


def customer_action(intent: Any) -> CustomerAction | None:
    """What the customer must do for a requires_action PaymentIntent (its ``next_action``,
    https://docs.stripe.com/api/payment_intents/object#payment_intent_object-next_action):
    the hosted page where Stripe gives one; for ``use_stripe_sdk`` the intent's
    ``client_secret``, which Stripe.js completes the step with on the customer's device;
    for ``display_bank_transfer_instructions`` the account to pay into (its first
    financial address), the reference to quote and the amount still due."""
    next_action = getattr(intent, "next_action", None)
    if getattr(intent, "status", None) != "requires_action" or next_action is None:
        return None
    action_type, url = next_action_url(next_action)
    if action_type is None:
        return None
    secret = getattr(intent, "client_secret", None)
    transfer = None
    if action_type == "display_bank_transfer_instructions":
        transfer = _bank_transfer(next_action.display_bank_transfer_instructions)
    return CustomerAction(
        type=action_type,
        url=url,
        client_secret=str(secret) if secret and action_type == "use_stripe_sdk" else None,
        bank_transfer=transfer,
    )


def _bank_transfer(details: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in ("type", "reference", "currency"):
        if getattr(details, key, None):
            found[key] = str(getattr(details, key))
    remaining, currency = getattr(details, "amount_remaining", None), found.get("currency")
    if remaining is not None and currency:
        found["amount_remaining"] = str(
            from_minor(from_stripe_amount(int(remaining), currency), currency.upper())
        )
    addresses = getattr(details, "financial_addresses", None) or []
    if addresses:
        address = addresses[0]
        kind = str(getattr(address, "type", ""))
        fields: Any = getattr(address, kind, None) or {}
        values = fields.to_dict() if hasattr(fields, "to_dict") else dict(fields)
        for name, value in values.items():
            if isinstance(value, str | int) and not isinstance(value, bool):
                found[f"{kind}.{name}"] = str(value)
    return found


def authentication_required(exc: stripe.CardError, reference: str) -> PaymentOutcome | None:
    """An off-session charge the bank wants the customer to authenticate: Stripe answers
    402 ``authentication_required`` with the PaymentIntent, which the customer confirms
    on-session with its client_secret (https://docs.stripe.com/payments/save-and-reuse).
    Not a decline: pending, with what the customer must do."""
    error = exc.error
    if error is None or error.code != "authentication_required":
        return None
    intent = getattr(error, "payment_intent", None)
    secret = getattr(intent, "client_secret", None) if intent is not None else None
    return PaymentOutcome(
        status=OutcomeStatus.PENDING,
        reference=reference,
        provider_transaction_id=getattr(intent, "id", None),
        code="authentication_required",
        message="the customer must authenticate this payment on-session (Stripe.js with "
        "the client_secret)",
        next_action=CustomerAction(
            type="authentication_required", client_secret=str(secret) if secret else None
        ),
        provider_status="requires_payment_method",
    )


def saved_method_of(
    status: str, setup_future_usage: Any, payment_method: Any, customer: Any
) -> SavedMethod | None:
    """A succeeded PaymentIntent set up for future off-session use leaves its
    PaymentMethod attached to its Customer: the two charge it again."""
    if status != "succeeded" or setup_future_usage != "off_session":
        return None
    if not isinstance(payment_method, str) or not isinstance(customer, str):
        return None
    return SavedMethod(token=SecretStr(payment_method), provider_customer_id=customer)


def intent_status(status: str, metadata: Mapping[str, Any] | None) -> OutcomeStatus:
    """Tender's outcome for a PaymentIntent ``status``, by the flow in its ``metadata``
    (an intent without one is read as a checkout's: a payable order is never failed on a
    guess). An unknown status waits (PENDING)."""
    flow = (metadata or {}).get(FLOW_KEY)
    table = _PI_STATUS["saved" if flow == "saved" else "checkout"]
    return table.get(status, OutcomeStatus.PENDING)


_REFUND_STATUS = {
    "succeeded": RefundStatus.SUCCEEDED,
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}
# Dispute.status (https://docs.stripe.com/api/disputes/object#dispute_object-status): the
# warning_* statuses are inquiries, appeal_* a lost dispute appealed. warning_closed: the
# inquiry closed without a chargeback. prevented: stopped before a chargeback by refunding
# the customer (Visa Rapid Dispute Resolution), so the money went back to them.
DISPUTE_STATUS = {
    "warning_needs_response": DisputeStatus.OPEN,
    "warning_under_review": DisputeStatus.OPEN,
    "needs_response": DisputeStatus.OPEN,
    "under_review": DisputeStatus.OPEN,
    "appeal_needs_response": DisputeStatus.OPEN,
    "appeal_under_review": DisputeStatus.OPEN,
    "warning_closed": DisputeStatus.WON,
    "won": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
    "prevented": DisputeStatus.LOST,
}
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)  # nothing reached Stripe
# Error codes (https://docs.stripe.com/error-codes) that refuse a request for the account's
# own limits or settings, not the customer's card: another provider may take the payment.
ACCOUNT_REFUSALS = frozenset(
    {
        "amount_too_large",  # over the account's maximum for the currency
        "amount_too_small",  # under Stripe's minimum charge for the currency
        "payment_method_unactivated",  # the method is not activated on the account
        "testmode_charges_only",  # the account is not activated for live charges
    }
)


class StripeProvider(PaymentProvider):
    """Stripe: PaymentIntents for saved payment methods, Checkout Sessions otherwise."""

    name: ClassVar[str] = "stripe"
    display_name: ClassVar[str] = "Stripe"
    supported_currencies: ClassVar[frozenset[str]] = STRIPE_CURRENCIES
    config_model: ClassVar[type[ProviderConfig]] = StripeConfig
    api_hosts: ClassVar[frozenset[str]] = frozenset({"api.stripe.com"})
    lifecycle: ClassVar[Lifecycle] = LIFECYCLE
    # https://docs.stripe.com/declines/codes: expired_card
    method_gone_codes: ClassVar[Mapping[str, str]] = {"expired_card": "expired"}
    decline_codes: ClassVar[Mapping[str, Decline]] = STRIPE_DECLINES
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.PENDING_CHECKOUT,
            Capability.PARTIAL_REFUNDS,
            Capability.RETRY_HINTS,
            Capability.EXPIRES_CHECKOUT,
            Capability.RETRY_AFTER_DECLINE,
            Capability.SIGNED_BODY,
            Capability.SIGNED_TIMESTAMPS,
            Capability.DISPUTE_WEBHOOKS,
            Capability.READS_REFUNDS,
            Capability.SAVES_METHODS,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._client: stripe.StripeClient | None = None

    @property
    def settings(self) -> StripeConfig:
        config = self.config
        assert isinstance(config, StripeConfig)
        return config

    def on_configured(self) -> None:
        settings = self.settings
        self._client = stripe.StripeClient(
            settings.secret_key.get_secret_value(),
            base_addresses={"api": settings.base_url},
            max_network_retries=0,
            http_client=stripe.HTTPXClient(timeout=settings.timeout_s),
        )

    async def aclose(self) -> None:
        self._client = None

    @property
    def _sdk(self) -> stripe.StripeClient:
        if self._client is None:
            raise ConfigurationError("stripe provider used after aclose()", provider=self.name)
        return self._client

    # --- the seam ------------------------------------------------------------------------

    async def _call(self, call: Awaitable[T], *, moves_money: bool) -> T:
        """The one place SDK failures become Tender's errors (see _classify)."""
        try:
            return await call
        except stripe.StripeError as exc:
            raise self._classify(exc, moves_money) from None

    def _classify(self, exc: stripe.StripeError, moves_money: bool) -> Exception:
        error = exc.error
        code = (error.decline_code or error.code) if error else None
        message = self.scrub(exc.user_message or str(exc.__class__.__name__))
        if isinstance(exc, stripe.CardError):
            return PaymentDeclined(message, provider=self.name, code=code or "card_declined")
        if isinstance(exc, stripe.PermissionError):
            # A restricted key without this call's permission: the key works, the account
            # may not do this (https://docs.stripe.com/keys#limit-access).
            return RequestRefused(
                f"Stripe refused the key this call: {message}",
                provider=self.name,
                code="permission_error",
            )
        if isinstance(exc, stripe.AuthenticationError):
            return ConfigurationError(
                f"Stripe rejected the secret key: {message}",
                provider=self.name,
                code="key_rejected",
            )
        if isinstance(exc, stripe.RateLimitError):
            hint = (exc.headers or {}).get("retry-after")
            return ProviderUnavailable(
                f"rate limited by Stripe: {message}",
                provider=self.name,
                code="rate_limited",
                retry_after_s=float(hint) if hint and hint.isdigit() else None,
            )
        if isinstance(exc, stripe.IdempotencyError):
            # Tender derives each key from the reference and the operation; different
            # parameters under one key is a bug to report, never a reason to charge again.
            logger.error("stripe idempotency error (a Tender bug): %s", message)
            return OutcomeUnknown(
                f"Stripe refused a reused idempotency key: {message}",
                provider=self.name,
                code="idempotency_error",
            )
        if isinstance(exc, stripe.APIConnectionError):
            if isinstance(exc.__cause__, _NOT_SENT):
                return ProviderUnavailable(
                    "could not reach Stripe", provider=self.name, code="connection_failed"
                )
            return (OutcomeUnknown if moves_money else ProviderUnavailable)(
                "no answer from Stripe", provider=self.name, code="no_answer"
            )
        if isinstance(exc, stripe.InvalidRequestError) and code in ACCOUNT_REFUSALS:
            return RequestRefused(message, provider=self.name, code=code)
        if isinstance(exc, stripe.InvalidRequestError) and (exc.http_status or 0) < 500:
            status = exc.http_status or 400
            if status == 404:
                return PaymentDeclined(message, provider=self.name, code=code or "not_found")
            return PaymentDeclined(message, provider=self.name, code=code or "invalid_request")
        # 5xx and anything unexpected after sending: the request may have been applied.
        return (OutcomeUnknown if moves_money else ProviderUnavailable)(
            f"Stripe error: {message}", provider=self.name, code=code or "api_error"
        )

    def _options(self, reference: str, operation: str) -> stripe.RequestOptions:
        return {"idempotency_key": f"tender-{reference}-{operation}"}

    # --- payments --------------------------------------------------------------------------

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        if not self.supports(request.currency):
            raise ProviderUnavailable(
                f"stripe does not take {request.currency}", provider=self.name
            )
        amount = to_stripe_amount(request.amount_minor, request.currency)
        metadata = {**{k: str(v) for k, v in request.metadata.items()}}
        metadata |= {REFERENCE_KEY: request.reference, "order_id": request.order_id}
        if request.payment_token is not None:
            params: dict[str, Any] = {
                "amount": amount,
                "currency": request.currency.lower(),
                "payment_method": request.payment_token.get_secret_value(),
                "confirm": True,
                "return_url": self.settings.return_url,
                "metadata": metadata | {FLOW_KEY: "saved"},
                "receipt_email": request.customer_email,
            }
            if request.customer_id:
                # a saved PaymentMethod is charged with the Customer it is attached to
                params["customer"] = request.customer_id
            if request.off_session:
                # merchant-initiated, nobody present: Stripe then asks no 3-D Secure it
                # can avoid, and says authentication_required when it cannot
                # (https://docs.stripe.com/payments/save-and-reuse#charge-saved-payment-method)
                params["off_session"] = True
                params.pop("return_url")
            if self.settings.statement_descriptor:
                params["statement_descriptor_suffix"] = self.settings.statement_descriptor
            try:
                intent = await self._sdk.v1.payment_intents.create_async(
                    params,  # type: ignore[arg-type]
                    self._options(request.reference, "charge"),
                )
            except stripe.CardError as exc:
                needs = authentication_required(exc, request.reference)
                if needs is not None:
                    return needs
                raise self._classify(exc, True) from None
            except stripe.StripeError as exc:
                raise self._classify(exc, True) from None
            return self._intent_outcome(intent, request.reference)
        checkout: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": amount,
                        "product_data": {"name": f"Order {request.order_id}"},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": self.settings.return_url,
            "client_reference_id": request.reference,
            "customer_email": request.customer_email,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata | {FLOW_KEY: "checkout"}},
        }
        if request.save_method:
            # the customer agreed to save the card: attached to a Customer, for charges
            # with nobody present ("save payment details during payment",
            # https://docs.stripe.com/payments/checkout/save-during-payment)
            checkout["payment_intent_data"]["setup_future_usage"] = "off_session"
            checkout["customer_creation"] = "always"
        session = await self._call(
            self._sdk.v1.checkout.sessions.create_async(
                checkout,  # type: ignore[arg-type]
                self._options(request.reference, "checkout"),
            ),
            moves_money=True,
        )
        return PaymentOutcome(
            status=OutcomeStatus.PENDING,
            reference=request.reference,
            provider_transaction_id=session.id,
            amount_minor=request.amount_minor,
            currency=request.currency,
            authorization_url=session.url,
            provider_status="open",
        )

    def _intent_outcome(self, intent: Any, reference: str) -> PaymentOutcome:
        status = intent_status(intent.status, _metadata_of(intent))
        action_url = action_type = None
        action = customer_action(intent)
        if action is not None:
            action_type, action_url = action.type, action.url
        error = getattr(intent, "last_payment_error", None)
        saved = saved_method_of(
            str(intent.status), getattr(intent, "setup_future_usage", None),
            getattr(intent, "payment_method", None), getattr(intent, "customer", None),
        )  # fmt: skip
        return PaymentOutcome(
            status=status,
            reference=reference,
            provider_transaction_id=intent.id,
            amount_minor=from_stripe_amount(intent.amount, intent.currency),
            currency=intent.currency.upper(),
            authorization_url=action_url,
            next_action=action,
            saved_method=saved,
            provider_status=str(intent.status),
            code=(getattr(error, "decline_code", None) or getattr(error, "code", None))
            if status is OutcomeStatus.FAILED and error
            else action_type,
            message=_ACTION_MESSAGES.get(action_type or ""),
        )

    async def _find_intent(self, reference: str) -> Any | None:
        found = await self._call(
            self._sdk.v1.payment_intents.search_async(
                {"query": f"metadata['{REFERENCE_KEY}']:'{reference}'", "limit": 1}
            ),
            moves_money=False,
        )
        return found.data[0] if found.data else None

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        """By the id the ledger holds (a Checkout Session ``cs_`` or a PaymentIntent
        ``pi_``: read at once), else by the Search API, which lags writes
        (https://docs.stripe.com/search#data-freshness)."""
        if provider_id and provider_id.startswith("cs_"):
            return await self._session_outcome(provider_id, reference)
        if provider_id and provider_id.startswith("pi_"):
            by_id = await self._call(
                self._sdk.v1.payment_intents.retrieve_async(provider_id), moves_money=False
            )
            return self._intent_outcome(by_id, reference)
        intent = await self._find_intent(reference)
        if intent is None:
            raise OutcomeUnknown(
                "no PaymentIntent with this reference is searchable (yet): Stripe's search "
                "lags behind writes, and an open Checkout has none until it is paid",
                provider=self.name,
                code="not_searchable_yet",
            )
        return self._intent_outcome(intent, reference)

    async def _intent_by_id(self, provider_id: str) -> Any | None:
        """The PaymentIntent of a ``pi_`` id, or of a ``cs_`` Checkout Session once it has
        one; None for any other id, or a session not yet tried."""
        if provider_id.startswith("cs_"):
            session = await self._call(
                self._sdk.v1.checkout.sessions.retrieve_async(provider_id), moves_money=False
            )
            provider_id = session.payment_intent if isinstance(session.payment_intent, str) else ""
        if not provider_id.startswith("pi_"):
            return None
        return await self._call(
            self._sdk.v1.payment_intents.retrieve_async(provider_id), moves_money=False
        )

    async def expire_checkout(self, reference: str, *, provider_id: str | None = None) -> bool:
        """End an open Checkout Session (``POST /v1/checkout/sessions/{id}/expire``: "after
        it expires, a customer can't complete a Checkout Session",
        https://docs.stripe.com/api/checkout/sessions/expire). Stripe refuses it for a
        session that is no longer open (paid, or expired already): False then."""
        if not provider_id or not provider_id.startswith("cs_"):
            return False
        try:
            await self._call(
                self._sdk.v1.checkout.sessions.expire_async(provider_id), moves_money=False
            )
        except PaymentDeclined:  # Stripe's 400 invalid_request_error: not open any more
            return False
        return True

    async def _session_outcome(self, session_id: str, reference: str) -> PaymentOutcome:
        """A Checkout Session read by id: its PaymentIntent's outcome once the customer has
        tried to pay (Checkout makes the intent then), pending while it is open and
        untried, failed once it expired unpaid."""
        session = await self._call(
            self._sdk.v1.checkout.sessions.retrieve_async(session_id), moves_money=False
        )
        intent_id = session.payment_intent
        if isinstance(intent_id, str) and intent_id:
            intent = await self._call(
                self._sdk.v1.payment_intents.retrieve_async(intent_id), moves_money=False
            )
            outcome = self._intent_outcome(intent, reference)
            if session.status == "expired" and outcome.status is OutcomeStatus.PENDING:
                # an attempt declined, then the page ended: nobody can pay it any more
                return outcome.model_copy(
                    update={"status": OutcomeStatus.FAILED, "code": "expired"}
                )
            return outcome
        amount = session.amount_total
        currency = str(session.currency or "").upper() or None
        return PaymentOutcome(
            status=OutcomeStatus.FAILED if session.status == "expired" else OutcomeStatus.PENDING,
            reference=reference,
            provider_transaction_id=session.id,
            amount_minor=from_stripe_amount(amount, currency) if amount and currency else None,
            currency=currency,
            authorization_url=session.url if session.status == "open" else None,
            code="expired" if session.status == "expired" else None,
            provider_status=str(session.status),
        )

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        intent = await self._intent_by_id(provider_id) if provider_id else None
        if intent is None:  # no id held: the Search API, which lags writes
            intent = await self._find_intent(reference)
        if intent is None or intent.status != "succeeded":
            raise PaymentDeclined(
                f"no succeeded Stripe payment {reference} to refund",
                provider=self.name,
                code="not_found",
            )
        params: dict[str, Any] = {
            "payment_intent": intent.id,
            "metadata": {REFERENCE_KEY: reference},
        }
        operation = f"refund-{refund_key}" if refund_key else "refund-all"
        if amount_minor is not None:
            params["amount"] = to_stripe_amount(amount_minor, intent.currency.upper())
            operation = f"refund-{refund_key}" if refund_key else f"refund-{amount_minor}"
        refund = await self._call(
            self._sdk.v1.refunds.create_async(
                params,  # type: ignore[arg-type]
                self._options(reference, operation),
            ),
            moves_money=True,
        )
        return RefundOutcome(
            status=_REFUND_STATUS.get(refund.status or "", RefundStatus.PENDING),
            reference=reference,
            refund_id=refund.id,
            amount_minor=from_stripe_amount(refund.amount, refund.currency),
            currency=refund.currency.upper(),
        )

    async def refund_status(
        self, reference: str, refund_id: str, *, currency: str | None = None
    ) -> RefundOutcome | None:
        """``GET /v1/refunds/{id}`` (https://docs.stripe.com/api/refunds/retrieve)."""
        refund = await self._call(self._sdk.v1.refunds.retrieve_async(refund_id), moves_money=False)
        return RefundOutcome(
            status=_REFUND_STATUS.get(refund.status or "", RefundStatus.PENDING),
            reference=reference,
            refund_id=refund.id,
            amount_minor=from_stripe_amount(refund.amount, refund.currency),
            currency=refund.currency.upper(),
            message=getattr(refund, "failure_reason", None),
        )

    # --- health ----------------------------------------------------------------------------

    async def health_check(self) -> HealthCheck:
        """The balance: a cheap authenticated read (see providers.base.probe_health)."""
        return await probe_health(
            self._call(self._sdk.v1.balance.retrieve_async(), moves_money=False),
            slow_after_s=SLOW_HEALTH_FRACTION * self.settings.timeout_s,
        )

    # --- webhooks --------------------------------------------------------------------------

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        signature = {k.lower(): v for k, v in headers.items()}.get("stripe-signature")
        try:
            stripe.WebhookSignature.verify_header(
                raw_body.decode("utf-8", "replace"),
                signature or "",
                self.settings.webhook_secret.get_secret_value(),
                self.settings.webhook_tolerance_s,
            )
        except stripe.SignatureVerificationError:
            raise WebhookSignatureError("missing, invalid or stale Stripe-Signature") from None
        try:
            event = load_json(raw_body)
            if event["data"]["object"].get("object") == "dispute":
                return await self._dispute_event(event)
            return self._event(event)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WebhookPayloadError(f"unreadable Stripe event: {type(exc).__name__}") from None

    async def _dispute_event(self, event: dict[str, Any]) -> WebhookEvent:
        """A ``charge.dispute.*`` event. A Dispute names its PaymentIntent, not Tender's
        reference (https://docs.stripe.com/api/disputes/object): the reference is read from
        that PaymentIntent's metadata, where Tender put it."""
        obj = event["data"]["object"]
        intent_id = obj.get("payment_intent")
        reference = None
        if isinstance(intent_id, str) and intent_id:
            intent = await self._call(
                self._sdk.v1.payment_intents.retrieve_async(intent_id), moves_money=False
            )
            reference = _metadata_of(intent).get(REFERENCE_KEY)
        currency = str(obj["currency"]).upper()
        due = (obj.get("evidence_details") or {}).get("due_by")
        return WebhookEvent(
            provider=self.name,
            event_id=str(event["id"]),
            event_type=str(event["type"]),
            reference=reference,
            dispute=DisputeOutcome(
                dispute_id=str(obj["id"]),
                status=DISPUTE_STATUS.get(str(obj["status"]), DisputeStatus.OPEN),
                amount_minor=from_stripe_amount(obj["amount"], currency),
                currency=currency,
                reason=obj.get("reason"),
                due_by=datetime.fromtimestamp(int(due), UTC) if due else None,
                provider_status=str(obj["status"]),
            ),
        )

    def _event(self, event: dict[str, Any]) -> WebhookEvent:
        kind = str(event["type"])
        obj = event["data"]["object"]
        base = {"provider": self.name, "event_id": str(event["id"]), "event_type": kind}
        if obj.get("object") == "payment_intent":
            outcome = intent_status(obj["status"], obj.get("metadata"))
            return WebhookEvent(
                **base,
                saved_method=saved_method_of(
                    str(obj["status"]),
                    obj.get("setup_future_usage"),
                    obj.get("payment_method"),
                    obj.get("customer"),
                ),
                reference=(obj.get("metadata") or {}).get(REFERENCE_KEY),
                status=outcome if outcome is not OutcomeStatus.PENDING else None,
                amount_minor=from_stripe_amount(obj["amount"], obj["currency"]),
                currency=obj["currency"].upper(),
            )
        if obj.get("object") == "checkout.session":
            paid = obj.get("payment_status") == "paid"
            expired = obj.get("status") == "expired"
            settled = (
                OutcomeStatus.SUCCEEDED if paid else (OutcomeStatus.FAILED if expired else None)
            )
            amount = obj.get("amount_total")
            return WebhookEvent(
                **base,
                reference=obj.get("client_reference_id"),
                status=settled,
                amount_minor=from_stripe_amount(amount, obj["currency"]) if amount else None,
                currency=str(obj["currency"]).upper() if obj.get("currency") else None,
            )
        if obj.get("object") == "refund":
            return WebhookEvent(
                **base,
                reference=(obj.get("metadata") or {}).get(REFERENCE_KEY),
                refund=RefundOutcome(
                    status=_REFUND_STATUS.get(obj.get("status") or "", RefundStatus.PENDING),
                    reference=(obj.get("metadata") or {}).get(REFERENCE_KEY) or "",
                    refund_id=obj["id"],
                    amount_minor=from_stripe_amount(obj["amount"], obj["currency"]),
                    currency=obj["currency"].upper(),
                ),
            )
        return WebhookEvent(**base)
