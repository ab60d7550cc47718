"""PayPal, through PayPal's official Server SDK (``paypal-server-sdk``, Orders v2 and
Payments v2).

* **One SDK client per instance**, with the instance's client credentials; the base address
  comes from the SDK's own hook (a :class:`Configuration` whose ``get_base_uri`` answers the
  instance's address), so tests reach a local fake without patching anything global. The
  SDK is synchronous: each call runs in a thread, off the worker's event loop.
* **One OAuth token per instance** (:class:`_TokenCache`), requested once and reused by
  every call and thread until a minute before it expires; a call PayPal answers ``401``
  (the token was revoked or expired early) fetches a new one and is repeated once, which is
  safe because PayPal processed nothing.
* **Charges.** Every payment starts as an order (intent ``CAPTURE``) whose ``reference_id``
  and ``invoice_id`` are Tender's reference. Without a saved payment source the order waits
  on the payer (``pending``, the ``payer-action`` link as ``authorization_url``) and is
  captured when approved (the ``CHECKOUT.ORDER.APPROVED`` webhook, or a verify). With one
  (``payment_token``, a PayPal vault id) the order is captured at once with that source.
* **At most once.** Create, capture and refund each carry a ``PayPal-Request-Id`` derived
  from the reference and the operation, so PayPal answers a repeat with the first answer;
  and ``invoice_id`` makes PayPal refuse a second capture for the same reference even after
  request ids expire (``DUPLICATE_INVOICE_ID``, then an unknown outcome, never a charge).
* **Verify** reads the order, with its capture, by the order id the ledger holds
  (``GET /v2/checkout/orders/{id}``): it never creates anything. PayPal offers no lookup
  by reference, so without an id verify cannot tell; recovery then repeats the charge
  itself (``Capability.REPLAYS_TO_RECOVER``), which the request ids above make a replay.
* **Money.** PayPal's amounts are decimal strings in major units; HUF, JPY and TWD take no
  decimals at PayPal (ISO gives HUF and TWD two). Amounts PayPal cannot carry exactly are
  refused before sending; nothing is rounded.
* **Webhooks** are verified by PayPal's ``verify-webhook-signature`` call with the
  transmission headers and the instance's ``webhook_id``; the certificate URL is never
  fetched by Tender (PayPal checks it), and one that is not PayPal's is refused outright.
* **Errors** (``name``, ``message``, ``debug_id``, ``details[].issue``) are classified at
  one seam by what is safe next (:meth:`PayPalProvider._classify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx
import requests
from paypalserversdk.configuration import Configuration, Server
from paypalserversdk.exceptions.api_exception import ApiException
from paypalserversdk.exceptions.o_auth_provider_exception import OAuthProviderException
from paypalserversdk.http.api_response import ApiResponse
from paypalserversdk.http.auth.o_auth_2 import ClientCredentialsAuthCredentials, OAuth2
from paypalserversdk.models.amount_with_breakdown import AmountWithBreakdown
from paypalserversdk.models.card_request import CardRequest
from paypalserversdk.models.checkout_payment_intent import CheckoutPaymentIntent
from paypalserversdk.models.money import Money
from paypalserversdk.models.o_auth_token import OAuthToken
from paypalserversdk.models.order_capture_request import OrderCaptureRequest
from paypalserversdk.models.order_request import OrderRequest
from paypalserversdk.models.payment_source import PaymentSource
from paypalserversdk.models.paypal_wallet import PaypalWallet
from paypalserversdk.models.paypal_wallet_attributes import PaypalWalletAttributes
from paypalserversdk.models.paypal_wallet_experience_context import (
    PaypalWalletExperienceContext,
)
from paypalserversdk.models.paypal_wallet_vault_instruction import PaypalWalletVaultInstruction
from paypalserversdk.models.purchase_unit_request import PurchaseUnitRequest
from paypalserversdk.models.refund_request import RefundRequest
from paypalserversdk.paypal_serversdk_client import PaypalServersdkClient
from pydantic import Field, SecretStr, field_validator
from urllib3.exceptions import NewConnectionError

from providers.base import (
    Capability,
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
    utcnow,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderError,
    ProviderUnavailable,
    RequestRefused,
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.money import MoneyError, ProviderUnits, Unit, exponent

logger = logging.getLogger(__name__)

ADDRESSES = {"sandbox": "https://api-m.sandbox.paypal.com", "live": "https://api-m.paypal.com"}
TOKEN_EARLY_S = 60  # a token is renewed this long before PayPal says it expires
SLOW_HEALTH_FRACTION = 0.8  # of timeout_s: a health check slower than this is DEGRADED
WHOLE_UNITS_AT_PAYPAL = frozenset({"HUF", "JPY", "TWD"})  # no decimals at PayPal
PAYPAL_CURRENCIES = frozenset(
    {
        "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS",
        "JPY", "MXN", "MYR", "NOK", "NZD", "PHP", "PLN", "SEK", "SGD", "THB", "TWD", "USD",
    }
)  # fmt: skip
# Issues that mean "the payer's money said no": final for this payment.
# Orders v2 issues about the merchant's (payee's) own account, not the payer's money
# (openapi/checkout_orders_v2.json in paypal/paypal-rest-api-specifications): the next
# instance may take the payment, and an operator has the account to fix.
ACCOUNT_ISSUES = frozenset(
    {
        "PAYEE_ACCOUNT_RESTRICTED",
        "PAYEE_ACCOUNT_LOCKED_OR_CLOSED",
        "PAYEE_ACCOUNT_NOT_VERIFIED",
        "PAYEE_NOT_ENABLED_FOR_CARD_PROCESSING",
        "NOT_ENABLED_FOR_CARD_PROCESSING",
        "CURRENCY_NOT_SUPPORTED_FOR_COUNTRY",
        "PERMISSION_DENIED",
    }
)
# Capture issues a payer at the checkout can recover from by choosing another funding
# source (Orders v2: REDIRECT_PAYER_FOR_ALTERNATE_FUNDING, "Redirect the payer to select
# another funding source"): pending on a checkout, declined for a saved source.
PAYER_RECOVERABLE = frozenset({"REDIRECT_PAYER_FOR_ALTERNATE_FUNDING", "PAYER_CANNOT_PAY"})
DECLINE_ISSUES = frozenset(
    {
        "INSTRUMENT_DECLINED",
        "PAYER_CANNOT_PAY",
        "TRANSACTION_REFUSED",
        "PAYER_ACCOUNT_LOCKED_OR_CLOSED",
        "PAYER_ACCOUNT_RESTRICTED",
        "REFERENCED_CARD_EXPIRED",
        "TOKEN_ID_NOT_FOUND",
        "MAX_NUMBER_OF_PAYMENT_ATTEMPTS_EXCEEDED",
        "TRANSACTION_LIMIT_EXCEEDED",
        "COMPLIANCE_VIOLATION",
    }
)
CAPTURED = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})
_ORDERS_DOC = "https://developer.paypal.com/docs/api/orders/v2/"
_EVENTS_DOC = "https://developer.paypal.com/api/rest/webhooks/event-names/"
# A capture's status, or the order's before it has a capture
LIFECYCLE = Lifecycle(
    (
        Stage("COMPLETED", OutcomeStatus.SUCCEEDED, _ORDERS_DOC),
        Stage("PARTIALLY_REFUNDED", OutcomeStatus.SUCCEEDED, _ORDERS_DOC),
        Stage("REFUNDED", OutcomeStatus.SUCCEEDED, _ORDERS_DOC),
        # e.g. PENDING_REVIEW: PAYMENT.CAPTURE.COMPLETED (or DENIED) follows
        Stage("PENDING", OutcomeStatus.PENDING, _EVENTS_DOC),
        Stage("DECLINED", OutcomeStatus.FAILED, _ORDERS_DOC),
        Stage("FAILED", OutcomeStatus.FAILED, _ORDERS_DOC),
        # an order before its capture: the payer has yet to approve it (or a 3-D Secure step)
        Stage("CREATED", OutcomeStatus.PENDING, _ORDERS_DOC, payable=True),
        Stage("PAYER_ACTION_REQUIRED", OutcomeStatus.PENDING, _ORDERS_DOC, payable=True),
        # approved: verify captures it at once, so the capture's status follows
        Stage("APPROVED", OutcomeStatus.PENDING, _ORDERS_DOC),
        Stage("VOIDED", OutcomeStatus.FAILED, _ORDERS_DOC),
    )
)
_CAPTURE_STATUS = LIFECYCLE.table("checkout")
_REFUND_STATUS = {
    "COMPLETED": RefundStatus.SUCCEEDED,
    "PENDING": RefundStatus.PENDING,
    "FAILED": RefundStatus.FAILED,
    "CANCELLED": RefundStatus.FAILED,
}
# How many webhook signature checks (each a call to PayPal) one instance runs at once.
MAX_CONCURRENT_VERIFICATIONS = 8
# A resolved dispute's outcome_code (customer_disputes_v1.json, dispute_outcome): who keeps
# the money. RESOLVED_WITH_PAYOUT: PayPal paid the customer from its own funds (the
# merchant keeps the money); ACCEPTED: the merchant accepted the claim and refunded.
# NONE and any code not listed stay open for an operator: never a guess about money.
_DISPUTE_OUTCOMES = {
    "RESOLVED_BUYER_FAVOUR": DisputeStatus.LOST,
    "ACCEPTED": DisputeStatus.LOST,
    "RESOLVED_SELLER_FAVOUR": DisputeStatus.WON,
    "RESOLVED_WITH_PAYOUT": DisputeStatus.WON,
    "CANCELED_BY_BUYER": DisputeStatus.WON,
    "DENIED": DisputeStatus.WON,
}
Flow = Literal["checkout", "saved"]


class PayPalConfig(ProviderConfig):
    """One PayPal REST app.

    Parameters:
        client_id: the REST app's client id.
        client_secret: the REST app's secret.
        webhook_id: the id PayPal gave the webhook pointing at Tender
            (``https://<your-host>/webhooks/paypal``); signatures are verified against it.
        environment: ``sandbox`` or ``live``: which PayPal the keys belong to.
        base_url: PayPal's API root, when it is neither of those (a local fake in tests).
        saved_payment_source: what a ``payment_token`` is: a vaulted ``paypal`` wallet or
            a vaulted ``card``.
        brand_name: the name the payer sees at PayPal.
        return_url: where the payer lands after approving.
        cancel_url: where the payer lands after cancelling.
        timeout_s: seconds one API call may take.
        webhook_tolerance_s: how old a delivery's signed ``PAYPAL-TRANSMISSION-TIME`` may
            be. PayPal retries a delivery "up to 25 times over 3 days"
            (https://developer.paypal.com/api/rest/webhooks/rest/) and does not say that
            a retry is stamped anew, so the default is that window and a day: anything
            older is a replay. Younger replays are caught by the event id.
    """

    client_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+$")
    client_secret: SecretStr
    webhook_id: str = Field(pattern=r"^[A-Za-z0-9]{1,50}$")
    environment: Literal["sandbox", "live"] = "sandbox"
    base_url: str | None = None
    saved_payment_source: Literal["paypal", "card"] = "paypal"
    brand_name: str | None = Field(default=None, max_length=127)
    return_url: str = "https://example.com/paid"
    cancel_url: str = "https://example.com/cancelled"
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhook_tolerance_s: int = Field(default=4 * 86_400, ge=300, le=30 * 86_400)

    @field_validator("client_secret")
    @classmethod
    def _secret_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("base_url", "return_url", "cancel_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value else value

    @property
    def address(self) -> str:
        return self.base_url or ADDRESSES[self.environment]


# --- money at PayPal's seam --------------------------------------------------------------


# PayPal's decimals per currency (https://developer.paypal.com/api/rest/reference/currency-codes/):
# ISO's, except HUF, JPY and TWD, which PayPal takes in whole units only.
PAYPAL_UNITS = ProviderUnits(
    "paypal",
    {
        code: Unit(
            0 if code in WHOLE_UNITS_AT_PAYPAL else exponent(code),
            "https://developer.paypal.com/api/rest/reference/currency-codes/",
        )
        for code in sorted(PAYPAL_CURRENCIES)
    },
)


def to_paypal_value(amount_minor: int, currency: str) -> str:
    """Tender's ISO minor units as PayPal's ``value``; ProviderUnavailable (nothing sent)
    when PayPal cannot carry the amount exactly: it is never rounded."""
    try:
        return str(PAYPAL_UNITS.to_decimal(amount_minor, currency))
    except MoneyError as exc:  # not sent, so provably not charged: another may carry it
        raise ProviderUnavailable(
            str(exc), provider="paypal", code="amount_not_representable"
        ) from None


def from_paypal_value(value: str, currency: str) -> int:
    return PAYPAL_UNITS.from_decimal(value, currency)


# --- the SDK, wired for Tender ----------------------------------------------------------


class _AddressedConfiguration(Configuration):
    """The SDK's configuration, answering the instance's address (its base-URI hook)."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        self._address = address
        super().__init__(**kwargs)

    def get_base_uri(self, server: Server = Server.DEFAULT) -> str:
        return self._address


class _TokenFailure(Exception):
    """Getting a token failed; ``cause`` says how. Nothing else was sent."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class _TokenCache:
    """The instance's OAuth token, shared by all its calls and threads (the SDK's token
    provider hook). One request renews it, however many calls find it missing at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: OAuthToken | None = None

    def __call__(self, last: OAuthToken | None, auth: OAuth2) -> OAuthToken:
        with self._lock:
            if self._token is not None and not auth.is_token_expired(self._token):
                return self._token
            return self._fetch(auth)

    def _fetch(self, auth: OAuth2) -> OAuthToken:
        try:
            token = auth.fetch_token()
        except Exception as exc:  # every failure is classified at the seam
            raise _TokenFailure(exc) from exc
        # Renew ahead of PayPal's expiry (half the lifetime for a short-lived token), so a
        # call never leaves with a token that expires on the way.
        lifetime_s = int(getattr(token, "expires_in", 0) or 0)
        if getattr(token, "expiry", None) is not None:
            token.expiry -= min(TOKEN_EARLY_S, lifetime_s // 2)
        self._token = token
        return token

    def renew(self, auth: OAuth2) -> OAuthToken:
        """A new token now (the health check: proves the credentials still work).

        The SDK keeps the token this cache last handed it and asks again only once that
        one has expired; the old one is marked expired, so the SDK's next call takes the
        new one. Otherwise a 401 on the old token would expire the new one (the cache's),
        and the retry would send the refused token again (issue 33)."""
        with self._lock:
            handed = self._token
            token = self._fetch(auth)
            if handed is not None and handed is not token:
                handed.expiry = 0
            return token

    @property
    def current(self) -> OAuthToken | None:
        return self._token

    def expire(self, token: OAuthToken | None) -> None:
        """PayPal refused ``token``: make the SDK (which keeps the same object) and this
        cache ask for a new one; a token another thread already renewed is left alone."""
        with self._lock:
            if token is not None:
                token.expiry = 0
            if self._token is token:
                self._token = None


# --- the provider -------------------------------------------------------------------------


class PayPalProvider(PaymentProvider):
    """PayPal Orders v2: approval checkout, or a capture with a vaulted payment source."""

    name: ClassVar[str] = "paypal"
    display_name: ClassVar[str] = "PayPal"
    supported_currencies: ClassVar[frozenset[str]] = PAYPAL_CURRENCIES
    config_model: ClassVar[type[ProviderConfig]] = PayPalConfig
    api_hosts: ClassVar[frozenset[str]] = frozenset(
        {"api-m.paypal.com", "api-m.sandbox.paypal.com"}
    )
    # PayPal's verify call checks the signature over the event's content (not its bytes)
    # and its transmission time, and PayPal gives no Retry-After on a rate limit.
    lifecycle: ClassVar[Lifecycle] = LIFECYCLE
    # Orders v2 issues: the vaulted card expired; the vault token no longer exists
    method_gone_codes: ClassVar[Mapping[str, str]] = {
        "REFERENCED_CARD_EXPIRED": "expired",
        "TOKEN_ID_NOT_FOUND": "revoked",
    }
    # Every decline issue PayPal names asks the payer to act (choose another funding
    # source, lift a restriction) or is final: none is retried elsewhere.
    decline_codes: ClassVar[Mapping[str, Decline]] = {
        issue: Decline(
            DeclineKind.HARD,
            f"https://developer.paypal.com/api/rest/reference/orders/v2/errors/ ({issue})",
        )
        for issue in sorted(DECLINE_ISSUES)
    }
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.PENDING_CHECKOUT,
            Capability.PARTIAL_REFUNDS,
            Capability.SIGNED_BODY,
            Capability.PENDING_CAPTURE,
            Capability.REPLAYS_TO_RECOVER,
            Capability.SIGNED_TIMESTAMPS,
            Capability.DISPUTE_WEBHOOKS,
            Capability.READS_REFUNDS,
            Capability.SAVES_METHODS,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._client: PaypalServersdkClient | None = None
        self._verifying = 0  # signature checks in flight (one event loop: a plain count)
        self._tokens = _TokenCache()

    @property
    def settings(self) -> PayPalConfig:
        config = self.config
        assert isinstance(config, PayPalConfig)
        return config

    def on_configured(self) -> None:
        settings = self.settings
        self._tokens = _TokenCache()
        credentials = ClientCredentialsAuthCredentials(
            o_auth_client_id=settings.client_id,
            o_auth_client_secret=settings.client_secret.get_secret_value(),
            o_auth_token_provider=self._tokens,
        )
        self._client = PaypalServersdkClient(
            config=_AddressedConfiguration(
                settings.address,
                timeout=settings.timeout_s,
                max_retries=0,  # Tender owns retries: a retried capture is a decision
                client_credentials_auth_credentials=credentials,
            )
        )

    async def aclose(self) -> None:
        self._client = None

    @property
    def _sdk(self) -> PaypalServersdkClient:
        if self._client is None:
            raise ConfigurationError("paypal provider used after aclose()", provider=self.name)
        return self._client

    # --- the seam ------------------------------------------------------------------------

    async def _call(self, call: Callable[[], ApiResponse], *, moves_money: bool) -> ApiResponse:
        """One SDK call in a thread: its response, or the error its failure means."""
        for attempt in (1, 2):
            token = self._tokens.current
            try:
                return await asyncio.to_thread(call)
            except _TokenFailure as exc:
                raise self._token_error(exc.cause) from None
            except ApiException as exc:
                if exc.response_code == 401 and attempt == 1:
                    # PayPal refused the token (revoked, or expired early) and processed
                    # nothing: a new token and one more try.
                    self._tokens.expire(token)
                    continue
                raise self._classify(exc, moves_money) from None
            except requests.RequestException as exc:
                raise self._transport_error(exc, moves_money) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _transport_error(self, exc: requests.RequestException, moves_money: bool) -> ProviderError:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(exc, requests.ConnectTimeout) or isinstance(reason, NewConnectionError):
            return ProviderUnavailable(
                "could not reach PayPal", provider=self.name, code="connection_failed"
            )
        error = OutcomeUnknown if moves_money else ProviderUnavailable
        return error(
            f"no answer from PayPal ({type(exc).__name__})", provider=self.name, code="no_answer"
        )

    def _token_error(self, cause: Exception) -> ProviderError:
        if isinstance(cause, OAuthProviderException):
            return ConfigurationError(
                "PayPal rejected the client id or secret key: "
                + self.scrub(str(getattr(cause, "error_description", None) or cause.reason)),
                provider=self.name,
                code="key_rejected",
            )
        if isinstance(cause, requests.RequestException):
            # Only the token request was sent: nothing was charged.
            return self._transport_error(cause, moves_money=False)
        if isinstance(cause, ApiException):
            return self._classify(cause, moves_money=False)
        return ProviderUnavailable(
            f"no PayPal token ({type(cause).__name__})", provider=self.name, code="no_token"
        )

    def _classify(self, exc: ApiException, moves_money: bool) -> ProviderError:
        try:
            body = json.loads(exc.response.text or "{}")
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        details: list[Any] = body["details"] if isinstance(body.get("details"), list) else []
        issue = next((str(d.get("issue")) for d in details if isinstance(d, dict)), None)
        name = str(body.get("name") or "")
        text = (details[0].get("description") if details else None) or body.get("message")
        message = self.scrub(f"{issue or name or exc.response_code}: {text or exc.reason}")
        if body.get("debug_id"):
            message += f" (debug_id {self.scrub(str(body['debug_id']))})"
        status = exc.response_code
        if status == 403 or issue in ACCOUNT_ISSUES:
            # The app lacks a permission, or the payee account cannot take this payment:
            # nothing was charged and the credentials work (a 401 says they do not).
            return RequestRefused(message, provider=self.name, code=issue or name or "403")
        if status == 401:
            return ConfigurationError(
                f"PayPal refused the app's credentials (key rejected): {message}",
                provider=self.name,
                code="key_rejected",
            )
        if status == 429:
            return ProviderUnavailable(
                f"rate limited by PayPal: {message}", provider=self.name, code="rate_limited"
            )
        if status >= 500 or issue == "PREVIOUS_REQUEST_IN_PROGRESS":
            # 409 PREVIOUS_REQUEST_IN_PROGRESS (Payments v2): the first call under this
            # request id is still running and may yet move the money
            error = OutcomeUnknown if moves_money else ProviderUnavailable
            code = issue if status == 409 else name or "api_error"
            return error(f"PayPal error: {message}", provider=self.name, code=code)
        if status == 404:
            return PaymentDeclined(message, provider=self.name, code="not_found")
        if issue in DECLINE_ISSUES:
            return PaymentDeclined(message, provider=self.name, code=issue)
        # UNPROCESSABLE_ENTITY and 400s: PayPal refused the request and did nothing. The
        # issue is the code, so callers can act on the ones that mean more (below).
        return PaymentDeclined(message, provider=self.name, code=issue or name or "refused")

    def _request_id(self, reference: str, operation: str) -> str:
        return f"tender-{reference}-{operation}"

    # --- payments --------------------------------------------------------------------------

    def _order_request(
        self,
        reference: str,
        amount_minor: int,
        currency: str,
        order_id: str,
        flow: Flow,
        save: bool = False,
    ) -> OrderRequest:
        unit = PurchaseUnitRequest(
            amount=AmountWithBreakdown(
                currency_code=currency, value=to_paypal_value(amount_minor, currency)
            ),
            reference_id=reference,
            invoice_id=reference,
            # The flow travels with the order: a verify must tell an order waiting on its
            # payer (pending) from one whose capture never landed (not charged).
            custom_id=f"{reference},{flow}",
            description=f"Order {order_id}"[:127],
        )
        if flow != "checkout":
            return OrderRequest(intent=CheckoutPaymentIntent.CAPTURE, purchase_units=[unit])
        settings = self.settings
        context = PaypalWalletExperienceContext(
            return_url=settings.return_url,
            cancel_url=settings.cancel_url,
            user_action="PAY_NOW",  # the payer's approval is the payment: capture follows
            shipping_preference="NO_SHIPPING",
            **({"brand_name": settings.brand_name} if settings.brand_name else {}),
        )
        # the payer agreed to save the wallet: vaulted once the payment succeeds
        # (Orders v2, payment_source.paypal.attributes.vault.store_in_vault ON_SUCCESS)
        attributes = (
            PaypalWalletAttributes(
                vault=PaypalWalletVaultInstruction(
                    usage_type="MERCHANT", store_in_vault="ON_SUCCESS"
                )
            )
            if save
            else None
        )
        wallet = PaypalWallet(experience_context=context, attributes=attributes)
        return OrderRequest(
            intent=CheckoutPaymentIntent.CAPTURE,
            purchase_units=[unit],
            payment_source=PaymentSource(paypal=wallet),
        )

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        if not self.supports(request.currency):
            raise ProviderUnavailable(
                f"paypal does not take {request.currency}", provider=self.name
            )
        flow: Flow = "checkout" if request.payment_token is None else "saved"
        body = self._order_request(
            request.reference, request.amount_minor, request.currency, request.order_id, flow,
            save=request.save_method,
        )  # fmt: skip
        order = await self._create_order(body, request.reference)
        if request.payment_token is None:
            return PaymentOutcome(
                status=OutcomeStatus.PENDING,
                reference=request.reference,
                provider_transaction_id=order.id,
                amount_minor=request.amount_minor,
                currency=request.currency,
                authorization_url=_link(order, "payer-action", "approve"),
                provider_status=str(order.status),
            )
        outcome = await self._capture(
            order.id, request.reference, vault_id=request.payment_token.get_secret_value()
        )
        if outcome.status is OutcomeStatus.FAILED:
            raise PaymentDeclined(
                outcome.message or "declined by PayPal",
                provider=self.name,
                provider_id=order.id,
                code=outcome.code or "DECLINED",
            )
        return outcome

    def _creating(
        self, body: OrderRequest, reference: str, operation: str, prefer: str
    ) -> Callable[[], ApiResponse]:
        """The SDK's create-order call under ``operation``'s request id, to run in a thread."""
        options = {
            "body": body,
            "paypal_request_id": self._request_id(reference, operation),
            "prefer": prefer,
        }
        return lambda: self._sdk.orders.create_order(options)

    async def _create_order(self, body: OrderRequest, reference: str) -> Any:
        """Create the payment's order (idempotent under its request id: a repeat returns
        the same order). Creating an order moves no money: a failure here is never
        ambiguous."""
        created = await self._call(
            self._creating(body, reference, "create", "return=representation"),
            moves_money=False,
        )
        return created.body

    async def _capture(
        self,
        order_id: str,
        reference: str,
        *,
        vault_id: str | None = None,
        approved_at: str | None = None,
    ) -> PaymentOutcome:
        options: dict[str, Any] = {
            "id": order_id,
            # One request id per approval (the order's update_time when the payer approved
            # it): a retry of this capture replays, while a capture after the payer approved
            # again (another funding source after REDIRECT_PAYER_FOR_ALTERNATE_FUNDING) is a
            # new request, not a replay of the refusal. A completed order cannot be captured
            # twice whatever the id (ORDER_ALREADY_CAPTURED), nor its invoice_id charged twice.
            "paypal_request_id": self._request_id(
                reference, f"capture-{_short_digest(approved_at)}" if approved_at else "capture"
            ),
            "prefer": "return=representation",
        }
        if vault_id is not None:
            source = (
                PaymentSource(card=CardRequest(vault_id=vault_id))
                if self.settings.saved_payment_source == "card"
                else PaymentSource(paypal=PaypalWallet(vault_id=vault_id))
            )
            options["body"] = OrderCaptureRequest(payment_source=source)
        try:
            captured = await self._call(
                lambda: self._sdk.orders.capture_order(options), moves_money=True
            )
        except OutcomeUnknown as exc:
            # The order exists: name it, so the ledger keeps its id and every later verify
            # reads it by id (the create's request id is only kept 6 hours).
            exc.provider_id = exc.provider_id or order_id
            raise
        except PaymentDeclined as exc:
            if exc.code == "ORDER_ALREADY_CAPTURED":  # by an earlier call: report it
                return self._order_outcome(await self._get_order(order_id), reference)
            if exc.code in PAYER_RECOVERABLE and vault_id is None:
                # On a checkout the payer can pay with another funding source on the same
                # order: it stays payable (its approve link), not declined for good.
                exc = PaymentDeclined(exc.message, provider=self.name, code="PAYER_ACTION_REQUIRED")
            if exc.code == "PAYER_ACTION_REQUIRED":  # 3-D Secure or a wallet step
                order = await self._get_order(order_id)
                return PaymentOutcome(
                    status=OutcomeStatus.PENDING,
                    reference=reference,
                    provider_transaction_id=order_id,
                    authorization_url=_link(order, "payer-action", "approve"),
                    code=exc.code,
                    provider_status="PAYER_ACTION_REQUIRED",
                )
            if exc.code == "DUPLICATE_INVOICE_ID":
                # PayPal already took a payment for this reference under an order Tender
                # cannot name now: never charge again; reconcile and the operator decide.
                raise OutcomeUnknown(
                    f"PayPal already has a payment for {reference}: {exc.message}",
                    provider=self.name,
                    code="DUPLICATE_INVOICE_ID",
                ) from None
            exc.provider_id = exc.provider_id or order_id  # declined on this order
            raise
        return self._order_outcome(captured.body, reference)

    async def _get_order(self, order_id: str) -> Any:
        response = await self._call(
            lambda: self._sdk.orders.get_order({"id": order_id}), moves_money=False
        )
        return response.body

    def _order_outcome(self, order: Any, reference: str) -> PaymentOutcome:
        unit = (getattr(order, "purchase_units", None) or [None])[0]
        payments = getattr(unit, "payments", None)
        capture = (getattr(payments, "captures", None) or [None])[0]
        flow = str(getattr(unit, "custom_id", "") or "").rpartition(",")[2]
        base: dict[str, Any] = {"reference": reference, "provider_transaction_id": order.id}
        amount = getattr(capture, "amount", None) or getattr(unit, "amount", None)
        if amount is not None:
            base["currency"] = str(amount.currency_code).upper()
            with contextlib.suppress(MoneyError, ArithmeticError):  # unreadable: left out
                base["amount_minor"] = from_paypal_value(str(amount.value), base["currency"])
        status = str(order.status)
        if capture is not None:
            capture_status = str(capture.status)
            details = getattr(capture, "status_details", None)
            status_of = _CAPTURE_STATUS.get(capture_status, OutcomeStatus.PENDING)
            return PaymentOutcome(
                status=status_of,
                saved_method=vaulted_wallet(order)
                if status_of is OutcomeStatus.SUCCEEDED
                else None,
                message=str(getattr(details, "reason", None) or capture_status),
                code=capture_status if capture_status in ("DECLINED", "FAILED") else None,
                provider_status=capture_status,
                **base,
            )
        if status == "VOIDED":
            return PaymentOutcome(status=OutcomeStatus.FAILED, code="VOIDED", **base)
        if flow == "saved" and status in ("CREATED", "SAVED"):
            # Tender captures these orders itself, at once: one still uncaptured was never
            # charged (reconcile waits until a capture in flight would have landed).
            return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)
        return PaymentOutcome(
            status=OutcomeStatus.PENDING,
            authorization_url=_link(order, "payer-action", "approve"),
            message=f"order {status}",
            provider_status=status,
            **base,
        )

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        """The order by its id (``GET /v2/checkout/orders/{id}``): nothing is created,
        however old the payment. PayPal has no lookup by reference (Orders v2 reads an
        order by id only), so without an id the answer is unknown: recovery then replays
        the idempotent charge instead (``Capability.REPLAYS_TO_RECOVER``)."""
        if not provider_id:
            raise OutcomeUnknown(
                f"no PayPal order id is recorded for {reference}, and PayPal finds orders "
                "by id only",
                provider=self.name,
                code="no_order_id",
            )
        try:
            order = await self._get_order(provider_id)
        except PaymentDeclined as exc:  # 404: an id PayPal does not know is not "never sent"
            raise OutcomeUnknown(
                f"PayPal has no order {provider_id}: {exc.message}",
                provider=self.name,
                code="order_not_found",
            ) from None
        if str(order.status) == "APPROVED":
            # The payer approved and no webhook captured it yet: capture now, under the
            # payment's capture request id, so a webhook doing the same charges nothing more.
            return await self._capture(
                order.id, reference, approved_at=_str(getattr(order, "update_time", None))
            )
        return self._order_outcome(order, reference)

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        # by the order id the ledger holds (every paid PayPal payment has one): nothing is
        # created, however old the payment
        if not provider_id:
            raise PaymentDeclined(
                f"no PayPal order id is recorded for {reference}",
                provider=self.name,
                code="not_found",
            )
        order = await self._get_order(provider_id)
        unit = (getattr(order, "purchase_units", None) or [None])[0]
        captures = getattr(getattr(unit, "payments", None), "captures", None) or []
        capture = next((c for c in captures if str(c.status) in CAPTURED), None)
        if capture is None:
            raise PaymentDeclined(
                f"no captured PayPal payment {reference} to refund",
                provider=self.name,
                code="not_found",
            )
        currency = str(capture.amount.currency_code).upper()
        body = RefundRequest(custom_id=reference)
        operation = f"refund-{refund_key}" if refund_key else "refund-all"
        if amount_minor is not None:
            body = RefundRequest(
                amount=Money(currency_code=currency, value=to_paypal_value(amount_minor, currency)),
                custom_id=reference,
            )
            operation = f"refund-{refund_key}" if refund_key else f"refund-{amount_minor}"
        response = await self._call(
            lambda: self._sdk.payments.refund_captured_payment(
                {
                    "capture_id": capture.id,
                    "body": body,
                    "paypal_request_id": self._request_id(reference, operation),
                    "prefer": "return=representation",
                }
            ),
            moves_money=True,
        )
        refund = response.body
        return RefundOutcome(
            status=_REFUND_STATUS.get(str(refund.status), RefundStatus.PENDING),
            reference=reference,
            refund_id=refund.id,
            amount_minor=from_paypal_value(str(refund.amount.value), currency),
            currency=currency,
        )

    # --- health ----------------------------------------------------------------------------

    async def refund_status(
        self, reference: str, refund_id: str, *, currency: str | None = None
    ) -> RefundOutcome | None:
        """``GET /v2/payments/refunds/{id}`` (Payments v2, "Show refund details"): PayPal
        sends no webhook when a pending refund fails or is cancelled (its Payments v2 event
        list has PAYMENT.CAPTURE.REFUNDED only), so reconcile reads it back."""
        answer = await self._call(
            lambda: self._sdk.payments.get_refund({"refund_id": refund_id}), moves_money=False
        )
        refund = answer.body
        unit = str(refund.amount.currency_code).upper()
        return RefundOutcome(
            status=_REFUND_STATUS.get(str(refund.status), RefundStatus.PENDING),
            reference=reference,
            refund_id=refund.id,
            amount_minor=from_paypal_value(str(refund.amount.value), unit),
            currency=unit,
        )

    async def health_check(self) -> HealthCheck:
        """A new OAuth token: proves PayPal answers and still takes the app's credentials."""

        async def renew() -> None:
            try:
                await asyncio.to_thread(self._tokens.renew, self._sdk.oauth_2)
            except _TokenFailure as exc:
                raise self._token_error(exc.cause) from None

        return await probe_health(
            renew(), slow_after_s=SLOW_HEALTH_FRACTION * self.settings.timeout_s
        )

    # --- webhooks --------------------------------------------------------------------------

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        sent = {k.lower(): v for k, v in headers.items()}
        names = (
            "auth-algo",
            "cert-url",
            "transmission-id",
            "transmission-sig",
            "transmission-time",
        )
        transmission = {n: sent.get(f"paypal-{n}", "") for n in names}
        if not all(transmission.values()):
            raise WebhookSignatureError("missing PayPal transmission headers")
        if not paypal_cert_url_ok(transmission["cert-url"]):
            # PayPal's verify call fetches the certificate, Tender never does; an address
            # that is not plainly PayPal's is a forgery whatever the rest says.
            raise WebhookSignatureError("PAYPAL-CERT-URL is not a paypal.com address")
        self._check_transmission_age(transmission["transmission-time"])
        try:
            event = load_json(raw_body)
            if not isinstance(event, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as exc:
            raise WebhookPayloadError(f"unreadable PayPal event: {type(exc).__name__}") from None
        if not await self._signature_verified(transmission, raw_body):
            raise WebhookSignatureError("PayPal says the signature does not match")
        try:
            return await self._event(event)
        except (KeyError, TypeError, AttributeError, MoneyError, ArithmeticError) as exc:
            raise WebhookPayloadError(f"unreadable PayPal event: {type(exc).__name__}") from None

    def _check_transmission_age(self, transmitted: str) -> None:
        """Refuse a delivery older than ``webhook_tolerance_s`` before asking PayPal: the
        time is part of what PayPal signs, so an old one cannot be passed off as new."""
        try:
            at = datetime.fromisoformat(transmitted.replace("Z", "+00:00"))
        except ValueError:
            raise WebhookSignatureError("PAYPAL-TRANSMISSION-TIME is not a time") from None
        if at.tzinfo is None:
            raise WebhookSignatureError("PAYPAL-TRANSMISSION-TIME has no time zone")
        age_s = (utcnow() - at).total_seconds()
        if age_s > self.settings.webhook_tolerance_s:
            raise WebhookSignatureError(
                f"PayPal transmission is {age_s / 3600:.0f} h old, older than the "
                f"{self.settings.webhook_tolerance_s / 3600:.0f} h tolerance: a replay"
            )

    async def _signature_verified(self, transmission: dict[str, str], raw_body: bytes) -> bool:
        """PayPal's own answer on the signature (``POST
        /v1/notifications/verify-webhook-signature``; the SDK has no call for it).

        PayPal signs a CRC32 of the event body as it sent it
        (https://developer.paypal.com/api/rest/webhooks/rest/#link-eventheadervalidation),
        so ``webhook_event`` is the body received, byte for byte: a parse and dump would
        change spacing, key order or escapes, and a genuine event would be refused."""
        fields = {
            "auth_algo": transmission["auth-algo"],
            "cert_url": transmission["cert-url"],
            "transmission_id": transmission["transmission-id"],
            "transmission_sig": transmission["transmission-sig"],
            "transmission_time": transmission["transmission-time"],
            "webhook_id": self.settings.webhook_id,
        }
        content = json.dumps(fields)[:-1].encode() + b', "webhook_event": ' + raw_body + b"}"
        # Anyone can post a PayPal-shaped webhook, and each one costs a call to PayPal:
        # only so many run at once; past that the caller is answered 503 at once (PayPal
        # redelivers a genuine event) instead of queueing threads behind forgeries.
        if self._verifying >= MAX_CONCURRENT_VERIFICATIONS:
            raise ProviderUnavailable(
                f"{MAX_CONCURRENT_VERIFICATIONS} PayPal signature checks already running",
                provider=self.name,
                code="verify_busy",
            )
        self._verifying += 1
        try:
            return await self._ask_paypal(content)
        finally:
            self._verifying -= 1

    async def _ask_paypal(self, content: bytes) -> bool:
        for attempt in (1, 2):
            try:
                token = await asyncio.to_thread(self._tokens, None, self._sdk.oauth_2)
            except _TokenFailure as exc:
                raise self._token_error(exc.cause) from None
            try:
                async with httpx.AsyncClient(
                    base_url=self.settings.address, timeout=self.settings.timeout_s
                ) as http:
                    answer = await http.post(
                        "/v1/notifications/verify-webhook-signature",
                        content=content,
                        headers={
                            "Authorization": f"Bearer {token.access_token}",
                            "Content-Type": "application/json",
                        },
                    )
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(
                    f"PayPal did not answer the signature check ({type(exc).__name__})",
                    provider=self.name,
                    code="no_answer",
                ) from None
            if answer.status_code == 401 and attempt == 1:
                self._tokens.expire(token)
                continue
            if answer.status_code != 200:
                raise ProviderUnavailable(
                    f"PayPal's signature check answered {answer.status_code}",
                    provider=self.name,
                    code="verify_failed",
                )
            return bool(answer.json().get("verification_status") == "SUCCESS")
        return False  # pragma: no cover

    async def _event(self, event: dict[str, Any]) -> WebhookEvent:
        kind = str(event["event_type"])
        resource = event["resource"]
        base = {"provider": self.name, "event_id": str(event["id"]), "event_type": kind}
        if kind == "CHECKOUT.ORDER.APPROVED":
            unit = resource["purchase_units"][0]
            approved_ref = str(unit.get("invoice_id") or unit["reference_id"])
            # The payer approved: capture (idempotent under the payment's request id).
            try:
                outcome = await self._capture(
                    str(resource["id"]), approved_ref, approved_at=_str(resource.get("update_time"))
                )
            except PaymentDeclined as exc:
                return WebhookEvent(
                    **base, reference=approved_ref, status=OutcomeStatus.FAILED, message=exc.message
                )
            return WebhookEvent(
                **base,
                reference=approved_ref,
                status=outcome.status
                if outcome.status in (OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED)
                else None,
                amount_minor=outcome.amount_minor,
                currency=outcome.currency,
            )
        if kind.startswith("PAYMENT.CAPTURE.") and kind != "PAYMENT.CAPTURE.REFUNDED":
            reference = _reference_of(resource)
            currency = str(resource["amount"]["currency_code"]).upper()
            status = _CAPTURE_STATUS.get(str(resource["status"]))
            return WebhookEvent(
                **base,
                reference=reference,
                status=status if status is not OutcomeStatus.PENDING else None,
                amount_minor=from_paypal_value(str(resource["amount"]["value"]), currency),
                currency=currency,
            )
        if kind == "PAYMENT.CAPTURE.REFUNDED":
            reference = _reference_of(resource)
            currency = str(resource["amount"]["currency_code"]).upper()
            return WebhookEvent(
                **base,
                reference=reference,
                refund=RefundOutcome(
                    status=_REFUND_STATUS.get(str(resource.get("status")), RefundStatus.PENDING),
                    reference=reference or "",
                    refund_id=str(resource["id"]),
                    amount_minor=from_paypal_value(str(resource["amount"]["value"]), currency),
                    currency=currency,
                ),
            )
        if kind.startswith("CUSTOMER.DISPUTE."):
            return await self._dispute_event(base, resource)
        return WebhookEvent(**base)

    async def _dispute_event(
        self, base: dict[str, Any], resource: Mapping[str, Any]
    ) -> WebhookEvent:
        """A ``CUSTOMER.DISPUTE.*`` event (https://developer.paypal.com/docs/disputes/webhooks/;
        the dispute object: ``paypal/paypal-rest-api-specifications``,
        ``openapi/customer_disputes_v1.json``). It names the capture, as
        ``seller_transaction_id``, and not always Tender's reference: that is the
        capture's ``invoice_id``, read from PayPal by the capture's id."""
        transactions = resource.get("disputed_transactions") or []
        first = transactions[0] if transactions else {}
        reference = _str(first.get("invoice_number"))
        capture_id = _str(first.get("seller_transaction_id"))
        if reference is None and capture_id is not None:
            answer = await self._call(
                lambda: self._sdk.payments.get_captured_payment({"capture_id": capture_id}),
                moves_money=False,
            )
            capture = answer.body
            reference = _reference_of(
                {"invoice_id": capture.invoice_id, "custom_id": capture.custom_id}
            )
        amount = resource.get("dispute_amount") or {}
        currency = _str(amount.get("currency_code"))
        amount_minor = (
            from_paypal_value(str(amount["value"]), currency.upper())
            if currency and amount.get("value") is not None
            else None
        )
        status = str(resource.get("status") or "")
        outcome = _str((resource.get("dispute_outcome") or {}).get("outcome_code"))
        due = _str(resource.get("seller_response_due_date"))
        return WebhookEvent(
            **base,
            reference=reference,
            dispute=DisputeOutcome(
                dispute_id=str(resource["dispute_id"]),
                status=(
                    _DISPUTE_OUTCOMES.get(outcome or "", DisputeStatus.OPEN)
                    if status == "RESOLVED"
                    else DisputeStatus.OPEN
                ),
                amount_minor=amount_minor,
                currency=currency.upper() if currency else None,
                reason=_str(resource.get("reason")),
                due_by=datetime.fromisoformat(due.replace("Z", "+00:00")) if due else None,
                provider_status=f"{status}/{outcome}" if outcome else status,
            ),
        )


# A certificate address as PayPal sends it: https, a paypal.com host, the default port, a
# plain path. Anything an HTTP client could read as another host (a backslash, userinfo,
# percent-escapes before the path, a port) is refused before urlsplit sees it, since
# urlsplit and the client that would fetch it disagree on such addresses.
_CERT_URL = re.compile(r"https://([a-z0-9-]+(?:\.[a-z0-9-]+)*)(/[A-Za-z0-9._~/-]*)?", re.ASCII)


def paypal_cert_url_ok(address: str) -> bool:
    """Whether ``address`` is plainly an https address on paypal.com or a subdomain."""
    match = _CERT_URL.fullmatch(address)
    if match is None:
        return False
    host = match.group(1)
    return host == "paypal.com" or host.endswith(".paypal.com")


def vaulted_wallet(order: Any) -> SavedMethod | None:
    """The wallet a captured order vaulted (store_in_vault ON_SUCCESS): its vault id
    charges it again, as a saved payment source (paypal_wallet_vault_response)."""
    wallet = getattr(getattr(order, "payment_source", None), "paypal", None)
    vault = getattr(getattr(wallet, "attributes", None), "vault", None)
    vault_id = getattr(vault, "id", None)
    if not vault_id:
        return None
    customer = getattr(getattr(vault, "customer", None), "id", None)
    return SavedMethod(
        token=SecretStr(str(vault_id)),
        provider_customer_id=str(customer) if customer else None,
        wallet_email=getattr(wallet, "email_address", None),
    )


def _short_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _link(order: Any, *rels: str) -> str | None:
    links = {str(link.rel): str(link.href) for link in getattr(order, "links", None) or []}
    return next((links[rel] for rel in rels if rel in links), None)


def _reference_of(resource: Mapping[str, Any]) -> str | None:
    """Tender's reference on a capture or a refund: its ``invoice_id``, else the part of
    ``custom_id`` before the flow."""
    if resource.get("invoice_id"):
        return str(resource["invoice_id"])
    custom = str(resource.get("custom_id") or "")
    return custom.rpartition(",")[0] or custom or None
