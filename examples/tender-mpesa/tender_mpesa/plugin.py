"""M-Pesa Express (Lipa na M-Pesa Online, "STK push") for Tender, over Safaricom's Daraja API
with ``httpx``: a provider plugin built outside Tender's core with its kit (issue 39).

What Daraja documents, and what this plugin does with it (sources: the Daraja portal's
M-Pesa Express pages, https://developer.safaricom.co.ke/APIs/MpesaExpressSimulate and
.../MpesaExpressQuery, and Safaricom's own client, github.com/safaricom/mpesa-node-library,
``lipa-na-mpesa-online`` and ``lipa-na-mpesa-query``):

* **Authorization.** ``GET /oauth/v1/generate?grant_type=client_credentials`` with HTTP Basic
  ``consumer_key:consumer_secret`` answers ``{"access_token", "expires_in": "3599"}``; the
  token is kept until a minute before it expires, and fetched again once if a call is
  refused as an invalid token (the call was not accepted, so nothing was charged).
* **A charge is a prompt.** ``POST /mpesa/stkpush/v1/processrequest`` sends the customer's
  phone a prompt for the amount; the answer (``ResponseCode: "0"``, ``CheckoutRequestID``)
  only says the prompt was accepted. The customer approves with their PIN or refuses, and
  M-Pesa posts the result to ``CallBackURL``: ``Capability.CONFIRMED_LATER``. ``Password`` is
  ``base64(shortcode + passkey + timestamp)``, ``Timestamp`` is ``YYYYMMDDHHMMSS`` in Nairobi's
  time; ``Amount`` is whole shillings ("only whole numbers are supported").
* **No idempotency key, no lookup by our reference** (``Capability.UNKEYED_CHARGES``): a
  second request is a second prompt, and ``POST /mpesa/stkpushquery/v1/query`` reads a
  prompt by its ``CheckoutRequestID`` only. Verify without that id answers ``OutcomeUnknown``,
  never "not found", so Tender never prompts twice for one payment.
* **The query names no amount.** The customer can only approve the amount asked or refuse,
  so a success is reported ``amount_as_asked`` (``Capability.FIXED_AMOUNT``).
* **Callbacks are unsigned** (``Capability.UNSIGNED_WEBHOOKS``): the body's
  ``Body.stkCallback.CheckoutRequestID`` is only a prompt to ask the query API, whose answer
  is what the event reports. The callback names no reference of Tender's, so the event
  carries the provider's id (``WebhookEvent.provider_id``) for the ledger to match.
* **Refunds** are M-Pesa reversals, made with an initiator's credential in the M-Pesa
  portal or the asynchronous Reversal API; this plugin drives neither
  (``Capability.NO_API_REFUNDS``): ``refund`` refuses with ``refunds_unsupported``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from providers.base import (
    Capability,
    CustomerAction,
    Decline,
    DeclineKind,
    HealthCheck,
    Lifecycle,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
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
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.money import MoneyError, ProviderUnits, Unit

EXPRESS = "https://developer.safaricom.co.ke/APIs/MpesaExpressSimulate"
QUERY = "https://developer.safaricom.co.ke/APIs/MpesaExpressQuery"
NAIROBI = timezone(timedelta(hours=3))  # East Africa Time, no daylight saving
SLOW_HEALTH_FRACTION = 0.8  # of timeout_s: a slower token fetch is DEGRADED
PROCESSING = "500.001.1001"  # the query's "The transaction is being processed"
INVALID_TOKEN = "404.001.03"
_PHONE = re.compile(r"254(?:7|1)\d{8}", re.ASCII)
# What a 400 "Bad Request - Invalid <field>" may name that is the customer's, not the
# merchant's: the number, the amount, the account shown on the prompt.
_CUSTOMER_FIELDS = frozenset({"phonenumber", "partya", "amount", "accountreference"})

# Daraja's Amount is whole Kenyan shillings; ISO 4217 gives KES two decimals.
MPESA_UNITS = ProviderUnits("mpesa", {"KES": Unit(0, EXPRESS + " (Amount: whole numbers)")})

# The prompt's result codes (ResultCode in the callback and the query), as the Daraja
# M-Pesa Express pages list them; "processing" is the query's answer while the customer
# has not yet answered the prompt. Every code but 0 ends the prompt with no money moved.
LIFECYCLE = Lifecycle(
    (
        Stage("processing", OutcomeStatus.PENDING, QUERY, payable=True),
        Stage("0", OutcomeStatus.SUCCEEDED, QUERY),
        Stage("1", OutcomeStatus.FAILED, QUERY),  # insufficient balance
        Stage("1001", OutcomeStatus.FAILED, QUERY),  # another prompt is in progress
        Stage("1019", OutcomeStatus.FAILED, QUERY),  # the prompt expired
        Stage("1025", OutcomeStatus.FAILED, QUERY),  # the prompt could not be sent
        Stage("1032", OutcomeStatus.FAILED, QUERY),  # cancelled by the customer
        Stage("1037", OutcomeStatus.FAILED, QUERY),  # the phone could not be reached
        Stage("2001", OutcomeStatus.FAILED, QUERY),  # wrong PIN
        Stage("9999", OutcomeStatus.FAILED, QUERY),  # the prompt could not be sent
    )
)


class MpesaConfig(ProviderConfig):
    """One Daraja app and the shortcode it collects to.

    Parameters:
        consumer_key, consumer_secret: the Daraja app's credentials (OAuth client).
        passkey: the Lipa na M-Pesa Online passkey of the shortcode.
        shortcode: the paybill or till's business shortcode (``BusinessShortCode``).
        transaction_type: ``CustomerPayBillOnline`` or ``CustomerBuyGoodsOnline``.
        party_b: who receives the money (a till number for buy goods); the shortcode if unset.
        callback_url: where M-Pesa posts results: Tender's ``/webhooks/mpesa``.
        base_url: Daraja's root (``https://sandbox.safaricom.co.ke`` for the sandbox).
        timeout_s: seconds one API call may take.
    """

    consumer_key: SecretStr
    consumer_secret: SecretStr
    passkey: SecretStr
    shortcode: str = Field(pattern=r"^\d{5,7}$")
    transaction_type: Literal["CustomerPayBillOnline", "CustomerBuyGoodsOnline"] = (
        "CustomerPayBillOnline"
    )
    party_b: str | None = Field(default=None, pattern=r"^\d{5,7}$")
    callback_url: str
    base_url: str = "https://api.safaricom.co.ke"
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("base_url", "callback_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


@dataclass(frozen=True)
class _Prompt:
    """A prompt as the query API reads it."""

    status: str  # "processing" or the ResultCode
    description: str


def msisdn(request: PaymentRequest) -> str:
    """The customer's M-Pesa number, from ``metadata.phone_number`` (254XXXXXXXXX)."""
    given = str(request.metadata.get("phone_number") or "").strip().removeprefix("+")
    if not _PHONE.fullmatch(given):
        # not sent: provably not charged, so another provider may take the payment
        raise ProviderUnavailable(
            "M-Pesa needs the customer's number as metadata.phone_number, 254 and 9 digits",
            provider="mpesa",
            code="phone_number_required",
        )
    return given


def account_reference(request: PaymentRequest) -> str:
    """What the customer's prompt shows as the account: the order id's first 12 letters and
    digits (Daraja: alphanumeric, at most 12), else the reference's last 12."""
    shown = re.sub(r"[^A-Za-z0-9]", "", request.order_id)[:12]
    return shown or request.reference[-12:]


class MpesaProvider(PaymentProvider):
    """M-Pesa Express: a prompt on the customer's phone, confirmed by callback or query."""

    name: ClassVar[str] = "mpesa"
    display_name: ClassVar[str] = "M-Pesa Express"
    supported_currencies: ClassVar[frozenset[str]] = MPESA_UNITS.currencies
    config_model: ClassVar[type[ProviderConfig]] = MpesaConfig
    api_hosts: ClassVar[frozenset[str]] = frozenset(
        {"api.safaricom.co.ke", "sandbox.safaricom.co.ke"}
    )
    lifecycle: ClassVar[Lifecycle] = LIFECYCLE
    # A refused prompt is the customer's answer (PIN, balance, cancel): never retried.
    decline_codes: ClassVar[Mapping[str, Decline]] = {
        "mpesa_1032": Decline(DeclineKind.HARD, QUERY + " (1032: cancelled by the user)"),
        "mpesa_1": Decline(DeclineKind.HARD, QUERY + " (1: insufficient balance)"),
    }
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.PENDING_CHECKOUT,
            Capability.CONFIRMED_LATER,
            Capability.UNKEYED_CHARGES,
            Capability.UNSIGNED_WEBHOOKS,
            Capability.NO_API_REFUNDS,
            Capability.FIXED_AMOUNT,
        }
    )
    # A prompt lives about a minute before M-Pesa ends it (1037, 1019); the hour is
    # Tender's least lifetime, and its last verify reads the prompt's result.
    checkout_lifetime_s: ClassVar[float] = 3600

    def __init__(self) -> None:
        super().__init__()
        self._http: httpx.AsyncClient | None = None
        self._token: tuple[str, float] | None = None  # (access token, monotonic expiry)
        self._token_lock = asyncio.Lock()

    @property
    def settings(self) -> MpesaConfig:
        config = self.config
        assert isinstance(config, MpesaConfig)
        return config

    def on_configured(self) -> None:
        settings = self.settings
        self._http = httpx.AsyncClient(base_url=settings.base_url, timeout=settings.timeout_s)
        self._token = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None

    def scrub(self, text: str) -> str:
        # The access token and the Basic credential are not config fields, but an API
        # that echoes a request's headers would show them.
        text = super().scrub(text)
        for secret in (self._token[0] if self._token else "", self._basic()):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _basic(self) -> str:
        if self._config is None:
            return ""
        pair = (
            f"{self.settings.consumer_key.get_secret_value()}:"
            f"{self.settings.consumer_secret.get_secret_value()}"
        )
        return base64.b64encode(pair.encode()).decode()

    def _password(self) -> tuple[str, str]:
        stamp = datetime.now(NAIROBI).strftime("%Y%m%d%H%M%S")
        settings = self.settings
        raw = f"{settings.shortcode}{settings.passkey.get_secret_value()}{stamp}"
        return base64.b64encode(raw.encode()).decode(), stamp

    # --- the seam ------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, *, moves_money: bool, **kwargs: Any
    ) -> httpx.Response:
        if self._http is None:
            raise ConfigurationError("mpesa provider used after aclose()", provider=self.name)
        try:
            return await self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ProviderUnavailable(
                "could not reach M-Pesa", provider=self.name, code="connection_failed"
            ) from None
        except httpx.HTTPError as exc:  # sent, then no (complete) answer
            error = OutcomeUnknown if moves_money else ProviderUnavailable
            raise error(
                f"no answer from M-Pesa ({type(exc).__name__})",
                provider=self.name,
                code="no_answer",
            ) from None

    def _envelope(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _error(self, body: Mapping[str, Any], response: httpx.Response) -> tuple[str, str]:
        code = str(body.get("errorCode") or response.status_code)
        message = self.scrub(str(body.get("errorMessage") or response.reason_phrase))
        return code, message

    async def _access_token(self, *, fresh: bool = False) -> str:
        async with self._token_lock:
            if not fresh and self._token is not None and time.monotonic() < self._token[1]:
                return self._token[0]
            response = await self._send(
                "GET",
                "/oauth/v1/generate",
                moves_money=False,
                params={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {self._basic()}"},
            )
            body = self._envelope(response)
            if response.status_code == 429:
                raise ProviderUnavailable(
                    "rate limited by M-Pesa", provider=self.name, code="rate_limited"
                )
            if response.status_code in (400, 401, 403):
                code, message = self._error(body, response)
                raise ConfigurationError(
                    f"M-Pesa rejected the consumer key and secret ({code}: {message})",
                    provider=self.name,
                    code="key_rejected",
                )
            token = body.get("access_token")
            if response.status_code != 200 or not isinstance(token, str) or not token:
                raise ProviderUnavailable(
                    f"M-Pesa authorization failed ({response.status_code})",
                    provider=self.name,
                    code="server_error",
                )
            given = str(body.get("expires_in") or "")
            lifetime = int(given) if given.isdigit() else 3599  # Daraja's documented hour
            self._token = (token, time.monotonic() + max(lifetime - 60, 0))
            return token

    async def _call(
        self, path: str, payload: dict[str, Any], *, moves_money: bool
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """POST with a bearer token, fetched again once if M-Pesa calls it invalid (the
        call was refused, so sending it again cannot charge twice)."""

        async def post(token: str) -> tuple[httpx.Response, dict[str, Any]]:
            response = await self._send(
                "POST",
                path,
                moves_money=moves_money,
                json=payload,
                headers={"Authorization": f"Bearer {token}"},
            )
            return response, self._envelope(response)

        response, body = await post(await self._access_token())
        if str(body.get("errorCode")) == INVALID_TOKEN:
            response, body = await post(await self._access_token(fresh=True))
        return response, body

    def _refusal(self, code: str, message: str) -> ConfigurationError | PaymentDeclined:
        """A 400 names the field it refused: the merchant's own settings (shortcode,
        password, callback...) are a configuration error, never the customer's decline."""
        field = message.rsplit("Invalid", 1)[-1].strip().lower() if "Invalid" in message else ""
        if field in _CUSTOMER_FIELDS:
            return PaymentDeclined(message, provider=self.name, code=code)
        return ConfigurationError(
            f"M-Pesa refused this instance's settings ({code}: {message})",
            provider=self.name,
            code="config_refused",
        )

    # --- payments --------------------------------------------------------------------------

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        phone = msisdn(request)
        try:
            amount = MPESA_UNITS.to_provider(request.amount_minor, request.currency)
        except MoneyError as exc:  # not sent: provably not charged
            raise ProviderUnavailable(
                str(exc), provider=self.name, code="amount_not_representable"
            ) from None
        password, stamp = self._password()
        settings = self.settings
        response, body = await self._call(
            "/mpesa/stkpush/v1/processrequest",
            {
                "BusinessShortCode": settings.shortcode,
                "Password": password,
                "Timestamp": stamp,
                "TransactionType": settings.transaction_type,
                "Amount": amount,
                "PartyA": phone,
                "PartyB": settings.party_b or settings.shortcode,
                "PhoneNumber": phone,
                "CallBackURL": settings.callback_url,
                "AccountReference": account_reference(request),
                "TransactionDesc": "Payment",
            },
            moves_money=True,
        )
        status = response.status_code
        code, message = self._error(body, response)
        if status == 429:
            raise ProviderUnavailable(
                f"rate limited by M-Pesa: {message}", provider=self.name, code="rate_limited"
            )
        if status in (401, 403, 404) and code == INVALID_TOKEN:
            raise ConfigurationError(
                f"M-Pesa refused a fresh access token ({code})", provider=self.name
            )
        if status >= 500 or (status == 200 and not body.get("CheckoutRequestID")):
            raise OutcomeUnknown(
                f"M-Pesa error {status}: {message}", provider=self.name, code="server_error"
            )
        if status != 200 or str(body.get("ResponseCode")) != "0":
            raise self._refusal(code, message)  # refused before any prompt was sent
        checkout = str(body["CheckoutRequestID"])
        return PaymentOutcome(
            status=OutcomeStatus.PENDING,
            reference=request.reference,
            provider_transaction_id=checkout,
            provider_status="processing",
            message=self.scrub(str(body.get("CustomerMessage") or "")) or None,
            next_action=CustomerAction(type="approve_on_phone"),
        )

    async def _query(self, checkout: str) -> _Prompt | None:
        """The prompt as M-Pesa has it now; None when it knows no such checkout."""
        password, stamp = self._password()
        response, body = await self._call(
            "/mpesa/stkpushquery/v1/query",
            {
                "BusinessShortCode": self.settings.shortcode,
                "Password": password,
                "Timestamp": stamp,
                "CheckoutRequestID": checkout,
            },
            moves_money=False,
        )
        code, message = self._error(body, response)
        if code == PROCESSING:
            return _Prompt("processing", message)
        if response.status_code == 429:
            raise ProviderUnavailable(
                f"rate limited by M-Pesa: {message}", provider=self.name, code="rate_limited"
            )
        if response.status_code >= 500:
            raise ProviderUnavailable(
                f"M-Pesa error {response.status_code}: {message}",
                provider=self.name,
                code="server_error",
            )
        if response.status_code == 400:
            if "checkoutrequestid" in message.lower():
                return None
            raise self._refusal(code, message)
        if response.status_code != 200 or "ResultCode" not in body:
            raise ProviderUnavailable(
                f"unreadable M-Pesa query answer ({response.status_code})",
                provider=self.name,
                code="unreadable",
            )
        return _Prompt(str(body["ResultCode"]), self.scrub(str(body.get("ResultDesc") or "")))

    def _outcome(self, reference: str, checkout: str, prompt: _Prompt) -> PaymentOutcome:
        status = LIFECYCLE.outcome(prompt.status, "checkout")
        return PaymentOutcome(
            status=status,
            reference=reference,
            provider_transaction_id=checkout,
            currency="KES",
            amount_as_asked=status is OutcomeStatus.SUCCEEDED,
            provider_status=prompt.status,
            code=f"mpesa_{prompt.status}" if status is OutcomeStatus.FAILED else None,
            message=prompt.description or None,
        )

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        if provider_id is None:
            # No lookup by our reference exists: "not found" would let a retry prompt again.
            raise OutcomeUnknown(
                "M-Pesa reads a prompt by its CheckoutRequestID only, and none was recorded "
                f"for {reference}; check the M-Pesa statement before settling it",
                provider=self.name,
                code="no_lookup",
            )
        prompt = await self._query(provider_id)
        if prompt is None:  # an id M-Pesa gave us and now denies: not proof of anything
            raise OutcomeUnknown(
                f"M-Pesa knows no checkout {provider_id}", provider=self.name, code="not_found"
            )
        return self._outcome(reference, provider_id, prompt)

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        raise PaymentDeclined(
            "M-Pesa Express has no refund call: reverse the transaction in the M-Pesa portal",
            provider=self.name,
            code="refunds_unsupported",
        )

    # --- health ------------------------------------------------------------------------------

    async def health_check(self) -> HealthCheck:
        """A fresh access token: proves Daraja answers and takes the app's credentials."""
        return await probe_health(
            self._access_token(fresh=True),
            slow_after_s=SLOW_HEALTH_FRACTION * self.settings.timeout_s,
        )

    # --- webhooks ----------------------------------------------------------------------------

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        try:
            callback = load_json(raw_body)["Body"]["stkCallback"]
            checkout = str(callback["CheckoutRequestID"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookPayloadError(f"unreadable M-Pesa callback: {type(exc).__name__}") from None
        # Unsigned: the body only says which prompt to ask about; the query API answers.
        prompt = await self._query(checkout)
        if prompt is None:
            raise WebhookSignatureError(f"M-Pesa knows no checkout {checkout}: not its callback")
        outcome = self._outcome("", checkout, prompt)
        settled = outcome.status in (OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED)
        return WebhookEvent(
            provider=self.name,
            # what M-Pesa says, in the id: a forged callback for a prompt still open must
            # not take the id of the genuine result that follows it
            event_id=f"stkCallback:{checkout}:{prompt.status}",
            event_type="stkCallback",
            provider_id=checkout,
            status=outcome.status if settled else None,
            currency=outcome.currency if settled else None,
            amount_as_asked=outcome.amount_as_asked,
            message=outcome.message,
        )
