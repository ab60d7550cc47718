"""Flutterwave, through its v3 HTTP API over ``httpx`` (it has no maintained v3 Python SDK;
the old ``rave_python`` targets the retired v2 API), the way its own server SDKs call it.

* **One ``httpx.AsyncClient`` per instance**: Bearer secret key, the instance's timeout, the
  base address configurable for tests, no retries of its own.
* **Charges.** A saved card (``payment_token``): ``POST /v3/tokenized-charges`` ->
  successful / pending / failed. Otherwise Flutterwave Standard, ``POST /v3/payments`` ->
  pending, with the hosted link as ``authorization_url``. ``tx_ref`` is the payment
  reference, so a retried charge carries the same reference.
* **Money in major units.** Flutterwave's amounts are decimal major units: sent as the
  exact decimal of the minor units (a JSON number written from a ``Decimal``, never a
  float), read back with ``parse_float=Decimal``.
* **Verify** by reference (``verify_by_reference?tx_ref=``), reporting the amount and
  currency Flutterwave recorded; the worker compares them with the ledger before calling a
  payment paid (an underpaid or other-currency transaction becomes ``unknown`` with
  ``amount_mismatch``, and an alert), as Flutterwave's docs require.
* **Webhooks** carry no signature over the body, only the ``verif-hash`` header, the
  instance's secret hash: it is compared in constant time, and then, as Flutterwave's docs
  require, the transaction is verified through the API; the event reports what the API
  says, not what the body claims.
  Refund events are handled the same way: only the refund's id is read from the body (v3
  documents no refund webhook body), the refund is read back with ``GET /v3/refunds/{id}``
  and its payment with ``GET /v3/transactions/{tx_id}/verify``.
* **Errors** (``{"status": "error", "message", "data"}``) are classified at one seam by what
  is safe next (``_answer``).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator

from providers.base import (
    Capability,
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
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.money import MoneyError, ProviderUnits, Unit, exponent

logger = logging.getLogger(__name__)

FLUTTERWAVE_CURRENCIES = frozenset(
    [
        "NGN",
        "GHS",
        "KES",
        "UGX",
        "TZS",
        "ZAR",
        "USD",
        "EUR",
        "GBP",
        "XAF",
        "XOF",
        "RWF",
        "ZMW",
        "MWK",
        "EGP",
        "MAD",
    ]
)
# Flutterwave's v3 amounts are decimal major units ("amount: the amount to charge the
# customer", https://developer.flutterwave.com/docs/flutterwave-standard-1), with the
# currency's ISO decimals: whole francs and shillings for XOF, XAF, RWF, UGX.
FLUTTERWAVE_UNITS = ProviderUnits(
    "flutterwave",
    {
        code: Unit(exponent(code), "https://developer.flutterwave.com/docs/flutterwave-standard-1")
        for code in sorted(FLUTTERWAVE_CURRENCIES)
    },
)
SLOW_HEALTH_FRACTION = 0.8  # of timeout_s: a health check slower than this is DEGRADED
# A transaction's status as Tender's outcome, by the flow that made it. A Standard (hosted)
# checkout has no transaction before the customer's first attempt, and a failed attempt
# can be retried on the same page under the same tx_ref
# (https://developer.flutterwave.com/docs/flutterwave-standard-1: the page lives for
# session_duration, 1440 minutes at most, and max_retry_attempt bounds "the number of times
# that a customer can retry after a failed transaction"), so a failed checkout transaction is not
# final until the checkout expires; a tokenized charge has nobody to retry it.
FLOW_KEY = "tender_flow"  # meta: "checkout" (tokenized charges carry no meta)
_STANDARD_DOC = "https://developer.flutterwave.com/docs/flutterwave-standard-1"
_VERIFY_DOC = "https://developer.flutterwave.com/docs/transaction-verification"
LIFECYCLE = Lifecycle(
    (
        Stage("successful", OutcomeStatus.SUCCEEDED, _VERIFY_DOC),
        Stage("completed", OutcomeStatus.SUCCEEDED, _VERIFY_DOC),
        Stage("pending", OutcomeStatus.PENDING, _VERIFY_DOC),
        # an attempt on the hosted page failed or was closed: the page takes a retry
        Stage("failed", OutcomeStatus.PENDING, _STANDARD_DOC, flows=("checkout",), payable=True),
        Stage("cancelled", OutcomeStatus.PENDING, _STANDARD_DOC, flows=("checkout",), payable=True),
        Stage("failed", OutcomeStatus.FAILED, _VERIFY_DOC, flows=("saved",)),
        Stage("cancelled", OutcomeStatus.FAILED, _VERIFY_DOC, flows=("saved",)),
    )
)
_STATUS: dict[str, dict[str, OutcomeStatus]] = {
    flow: LIFECYCLE.table(flow) for flow in ("checkout", "saved")
}


def card_method(data: Mapping[str, Any]) -> SavedMethod | None:
    """The card a successful transaction was paid with, as its ``card`` object reports it:
    the ``token`` charges it again through tokenized charges (Flutterwave/Node-v3,
    ``documentation/tokenization.md``); ``expiry`` is "MM/YY"."""
    card = data.get("card")
    if not isinstance(card, Mapping) or not isinstance(card.get("token"), str):
        return None
    month = year = None
    expiry = str(card.get("expiry") or "")
    if len(expiry) == 5 and expiry[2] == "/" and expiry.replace("/", "").isdigit():
        month, year = int(expiry[:2]), 2000 + int(expiry[3:])
    last4 = str(card.get("last_4digits") or "")
    return SavedMethod(
        token=SecretStr(str(card["token"])),
        brand=str(card.get("type") or "") or None,
        last4=last4 if len(last4) == 4 and last4.isdigit() else None,
        exp_month=month if month and 1 <= month <= 12 else None,
        exp_year=year,
    )


def refund_status(text: str) -> RefundStatus:
    """Flutterwave's refund status: ``completed`` and its ``completed-<rail>`` variants
    (``completed-momo``, ``completed-offline``...) are done, any ``*failed`` is not,
    everything else (``new``, ``pending``) is still on its way."""
    if text.startswith("completed"):
        return RefundStatus.SUCCEEDED
    return RefundStatus.FAILED if text.endswith("failed") else RefundStatus.PENDING


_NOT_FOUND = re.compile(r"no transaction was found", re.IGNORECASE)
_DUPLICATE = re.compile(r"duplicate", re.IGNORECASE)


class FlutterwaveConfig(ProviderConfig):
    """One Flutterwave account.

    Parameters:
        secret_key: ``FLWSECK-...`` (``FLWSECK_TEST-...`` in test mode).
        secret_hash: the webhook secret hash set on the dashboard (sent as ``verif-hash``).
        public_key: ``FLWPUBK-...``, for front-end surfaces; not used server-side.
        encryption_key: for direct card charges (not used: Tender charges tokens).
        redirect_url: where Flutterwave Standard returns the customer.
        base_url: Flutterwave's API root (a local fake in tests).
        timeout_s: seconds one API call may take.
    """

    secret_key: SecretStr
    secret_hash: SecretStr
    public_key: str | None = None
    encryption_key: SecretStr | None = None
    redirect_url: str = "https://example.com/paid"
    base_url: str = "https://api.flutterwave.com"
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("secret_key")
    @classmethod
    def _secret_key_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("FLWSECK"):
            raise ValueError("must be a Flutterwave secret key (FLWSECK-...)")
        return value

    @field_validator("secret_hash")
    @classmethod
    def _hash_length(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a guessable hash lets anyone post)")
        return value

    @field_validator("base_url", "redirect_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


def json_body(payload: Mapping[str, Any]) -> bytes:
    """JSON with ``Decimal`` amounts written as the exact numbers they are (the json module
    would only take them through float)."""

    def exact(value: object) -> str:
        if not isinstance(value, Decimal):
            raise TypeError(f"{type(value).__name__} is not JSON")
        return f"\x00{value}\x00"  # a marker no text value can hold (NUL is refused)

    text = json.dumps(payload, default=exact)
    return re.sub(r'"\\u0000(-?[0-9]+(?:\.[0-9]+)?)\\u0000"', r"\1", text).encode()


class FlutterwaveProvider(PaymentProvider):
    """Flutterwave v3: tokenized charges for saved cards, Flutterwave Standard otherwise."""

    name: ClassVar[str] = "flutterwave"
    display_name: ClassVar[str] = "Flutterwave"
    supported_currencies: ClassVar[frozenset[str]] = FLUTTERWAVE_CURRENCIES
    config_model: ClassVar[type[ProviderConfig]] = FlutterwaveConfig
    api_hosts: ClassVar[frozenset[str]] = frozenset({"api.flutterwave.com"})
    # Flutterwave v3 reports a refused charge as {"status": "error", "message": ...} and a
    # failed one's reason as free text (processor_response), not a code: nothing tells a
    # soft decline from a hard one, so none is ever retried elsewhere.
    decline_codes: ClassVar[Mapping[str, Decline]] = {
        "refused": Decline(
            DeclineKind.HARD,
            "https://developer.flutterwave.com/docs/tokenized-charge (message, "
            "processor_response: free text)",
        ),
    }
    # No signature over the body (only a shared hash) and no documented retry hint: the
    # body is never trusted, the API is asked instead.
    lifecycle: ClassVar[Lifecycle] = LIFECYCLE
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        # RETRY_HINTS: a 429's standard Retry-After is passed on when present.
        {
            Capability.PENDING_CHECKOUT,
            Capability.PARTIAL_REFUNDS,
            Capability.RETRY_HINTS,
            Capability.LAZY_CHECKOUT,
            Capability.RETRY_AFTER_DECLINE,
            Capability.READS_REFUNDS,
            Capability.SAVES_METHODS,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._http: httpx.AsyncClient | None = None

    @property
    def settings(self) -> FlutterwaveConfig:
        config = self.config
        assert isinstance(config, FlutterwaveConfig)
        return config

    def on_configured(self) -> None:
        settings = self.settings
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {settings.secret_key.get_secret_value()}"},
            timeout=settings.timeout_s,
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None

    # --- the seam ------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, moves_money: bool, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call: Flutterwave's ``data`` (a dict), or the error its answer means."""
        if self._http is None:
            raise ConfigurationError("flutterwave provider used after aclose()", provider=self.name)
        try:
            response = await self._http.request(
                method,
                path,
                content=json_body(body) if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ProviderUnavailable(
                "could not reach Flutterwave", provider=self.name, code="connection_failed"
            ) from None
        except httpx.HTTPError as exc:  # sent, then no (complete) answer
            error = OutcomeUnknown if moves_money else ProviderUnavailable
            raise error(
                f"no answer from Flutterwave ({type(exc).__name__})",
                provider=self.name,
                code="no_answer",
            ) from None
        return self._answer(response, moves_money)

    def _answer(self, response: httpx.Response, moves_money: bool) -> dict[str, Any]:
        try:
            envelope = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            envelope = None
        message = self.scrub(str((envelope or {}).get("message") or response.reason_phrase))
        status = response.status_code
        if status == 401:
            raise ConfigurationError(
                f"Flutterwave rejected the secret key: {message}",
                provider=self.name,
                code="key_rejected",
            )
        if status == 429:
            hint = response.headers.get("retry-after", "")
            raise ProviderUnavailable(
                f"rate limited by Flutterwave: {message}",
                provider=self.name,
                code="rate_limited",
                retry_after_s=float(hint) if hint.isdigit() else None,
            )
        if status >= 500 or not isinstance(envelope, dict):
            error = OutcomeUnknown if moves_money else ProviderUnavailable
            raise error(
                f"Flutterwave error {status}: {message}", provider=self.name, code="server_error"
            )
        if envelope.get("status") != "success":
            code = "refused"
            if _NOT_FOUND.search(message):
                code = "not_found"
            elif _DUPLICATE.search(message):
                code = "duplicate_reference"
            raise PaymentDeclined(message, provider=self.name, code=code)
        data = envelope.get("data")
        return data if isinstance(data, dict) else {}

    # --- payments --------------------------------------------------------------------------

    def _major(self, amount_minor: int, currency: str) -> Decimal:
        return FLUTTERWAVE_UNITS.to_decimal(amount_minor, currency)

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        try:
            return await self._charge(request)
        except PaymentDeclined as exc:
            if exc.code != "duplicate_reference":
                raise
        # Flutterwave already has this tx_ref (a retry, a redelivery): it charged nothing
        # now; report what became of the first charge.
        outcome = await self.verify_payment(request.reference)
        if outcome.status is OutcomeStatus.FAILED:
            raise PaymentDeclined(
                outcome.message or "declined by Flutterwave", provider=self.name, code="declined"
            )
        if outcome.status is OutcomeStatus.NOT_FOUND:
            raise OutcomeUnknown(
                "Flutterwave calls the reference a duplicate but cannot find it",
                provider=self.name,
                code="duplicate_reference",
            )
        return outcome

    async def _charge(self, request: PaymentRequest) -> PaymentOutcome:
        if not self.supports(request.currency):
            raise ProviderUnavailable(
                f"flutterwave does not take {request.currency}", provider=self.name
            )
        amount = self._major(request.amount_minor, request.currency)
        if request.payment_token is not None:
            data = await self._request(
                "POST",
                "/v3/tokenized-charges",
                moves_money=True,
                body={
                    "token": request.payment_token.get_secret_value(),
                    "currency": request.currency,
                    "amount": amount,
                    "email": request.customer_email,
                    "tx_ref": request.reference,
                    "narration": f"Order {request.order_id}",
                },
            )
            outcome = self._outcome(data, request.reference)
            if outcome.status is OutcomeStatus.FAILED:
                raise PaymentDeclined(
                    self.scrub(str(data.get("processor_response") or "declined by Flutterwave")),
                    provider=self.name,
                    code="declined",
                )
            return outcome
        data = await self._request(
            "POST",
            "/v3/payments",
            moves_money=True,
            body={
                "tx_ref": request.reference,
                "amount": amount,
                "currency": request.currency,
                "redirect_url": self.settings.redirect_url,
                "customer": {"email": request.customer_email},
                "customizations": {"title": f"Order {request.order_id}"},
                "meta": {"order_id": request.order_id, FLOW_KEY: "checkout"},
                # minutes the page stays payable (Flutterwave Standard: 1440 at most)
                "session_duration": int(min(self.lifetime_s, 24 * 3600) // 60),
            },
        )
        return PaymentOutcome(
            status=OutcomeStatus.PENDING,
            reference=request.reference,
            amount_minor=request.amount_minor,
            currency=request.currency,
            authorization_url=data.get("link"),
        )

    def _outcome(self, data: Mapping[str, Any], reference: str) -> PaymentOutcome:
        currency = str(data.get("currency") or "").upper()
        try:
            amount_minor = FLUTTERWAVE_UNITS.from_decimal(str(data["amount"]), currency)
        except (KeyError, MoneyError, ArithmeticError):
            amount_minor = None
        meta = data.get("meta")
        flow = meta.get(FLOW_KEY) if isinstance(meta, Mapping) else None
        table = _STATUS["checkout" if flow == "checkout" else "saved"]
        status = table.get(str(data.get("status")), OutcomeStatus.PENDING)
        return PaymentOutcome(
            status=status,
            saved_method=card_method(data) if status is OutcomeStatus.SUCCEEDED else None,
            provider_status=str(data.get("status") or "") or None,
            reference=reference,
            provider_transaction_id=str(data["id"]) if data.get("id") is not None else None,
            amount_minor=amount_minor,
            currency=currency or None,
            message=self.scrub(str(data.get("processor_response") or "")) or None,
        )

    async def _transaction(self, reference: str) -> dict[str, Any] | None:
        try:
            return await self._request(
                "GET",
                f"/v3/transactions/verify_by_reference?tx_ref={reference}",
                moves_money=False,
            )
        except PaymentDeclined as exc:
            if exc.code == "not_found":
                return None
            raise ProviderUnavailable(exc.message, provider=self.name, code=exc.code) from None

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        data = await self._transaction(reference)
        if data is None:
            return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)
        return self._outcome(data, reference)

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        data = await self._transaction(reference)
        if data is None or data.get("status") != "successful":
            raise PaymentDeclined(
                f"no successful Flutterwave payment {reference} to refund",
                provider=self.name,
                code="not_found",
            )
        currency = str(data["currency"]).upper()
        body: dict[str, Any] = {}
        if amount_minor is not None:
            body["amount"] = self._major(amount_minor, currency)
        refund = await self._request(
            "POST", f"/v3/transactions/{data['id']}/refund", moves_money=True, body=body
        )
        refunded = refund.get("amount_refunded")
        return RefundOutcome(
            status=refund_status(str(refund.get("status"))),
            reference=reference,
            refund_id=str(refund.get("id")),
            amount_minor=FLUTTERWAVE_UNITS.from_decimal(str(refunded), currency)
            if refunded
            else amount_minor,
            currency=currency,
        )

    # --- health ------------------------------------------------------------------------------

    async def health_check(self) -> HealthCheck:
        """Wallet balances: a cheap authenticated read (see providers.base.probe_health)."""
        return await probe_health(
            self._request("GET", "/v3/balances", moves_money=False),
            slow_after_s=SLOW_HEALTH_FRACTION * self.settings.timeout_s,
        )

    # --- webhooks ----------------------------------------------------------------------------

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        given = {k.lower(): v for k, v in headers.items()}.get("verif-hash", "")
        expected = self.settings.secret_hash.get_secret_value()
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise WebhookSignatureError("missing or wrong verif-hash")
        try:
            body = load_json(raw_body)
            kind = str(body.get("event") or body.get("event.type") or "unknown")
            data = body["data"]
            object_id = str(data["id"])
            reference = data.get("tx_ref")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WebhookPayloadError(
                f"unreadable Flutterwave event: {type(exc).__name__}"
            ) from None
        # The body is not signed: what it says is only a prompt to ask the API.
        if kind.lower().startswith("refund"):
            return await self._refund_event(kind, object_id)
        event_id = f"{kind}:{object_id}"
        if not reference:
            return WebhookEvent(provider=self.name, event_id=event_id, event_type=kind)
        verified = await self.verify_payment(str(reference))
        status = verified.status if verified.status is not OutcomeStatus.PENDING else None
        return WebhookEvent(
            provider=self.name,
            event_id=event_id,
            event_type=kind,
            reference=str(reference),
            status=None if verified.status is OutcomeStatus.NOT_FOUND else status,
            amount_minor=verified.amount_minor,
            currency=verified.currency,
        )

    async def refund_status(
        self, reference: str, refund_id: str, *, currency: str | None = None
    ) -> RefundOutcome | None:
        """``GET /v3/refunds/{id}``, the read the plugin's refund webhooks use too."""
        refund = await self._request("GET", f"/v3/refunds/{refund_id}", moves_money=False)
        unit = (currency or str(refund.get("currency") or "")).upper()
        return RefundOutcome(
            status=refund_status(str(refund.get("status"))),
            reference=reference,
            refund_id=refund_id,
            amount_minor=FLUTTERWAVE_UNITS.from_decimal(str(refund["amount_refunded"]), unit),
            currency=unit,
        )

    async def _refund_event(self, kind: str, refund_id: str) -> WebhookEvent:
        """A refund as the API reports it: the refund by id, then its transaction for the
        payment's reference and currency."""
        try:
            refund = await self._request("GET", f"/v3/refunds/{refund_id}", moves_money=False)
            tx = await self._request(
                "GET", f"/v3/transactions/{refund['tx_id']}/verify", moves_money=False
            )
            reference, currency = str(tx["tx_ref"]), str(tx["currency"]).upper()
            amount_minor = FLUTTERWAVE_UNITS.from_decimal(str(refund["amount_refunded"]), currency)
        except PaymentDeclined as exc:  # the API does not know the refund or its payment
            raise WebhookPayloadError(f"Flutterwave has no such refund: {exc.message}") from None
        except (KeyError, MoneyError, ArithmeticError) as exc:
            raise WebhookPayloadError(
                f"unreadable Flutterwave refund: {type(exc).__name__}"
            ) from None
        status = refund_status(str(refund.get("status")))
        return WebhookEvent(
            provider=self.name,
            # The API's status is part of the id: a refund announced while still pending is
            # announced again when it completes, and that must not be dropped as a duplicate.
            event_id=f"refund:{refund_id}:{status.value}",
            event_type=kind,
            reference=reference,
            refund=RefundOutcome(
                status=status,
                reference=reference,
                refund_id=refund_id,
                amount_minor=amount_minor,
                currency=currency,
            ),
        )
