"""The Paystack provider, through pypaystack2's ``AsyncPaystackClient``.

How pypaystack2 3.x behaves, and what this module does about it:

* **Errors are answers, not exceptions.** A 4xx/5xx comes back as a ``Response`` with
  ``status=False`` and Paystack's ``message`` and ``code``; a body that is not JSON (an HTML
  error page) comes back with ``raw`` holding the bytes. Only transport failures raise,
  as ``ClientNetworkError`` wrapping the httpx exception in ``original_exception``.
  Everything is translated at one seam, :meth:`PaystackProvider._call`, by two tables:
  :data:`_TRANSPORT_FAILURES` and :data:`_RESPONSE_FAILURES` name the failure, and
  :data:`_FAILURE_ERRORS` picks the error class for it, depending on whether money may
  have moved (a charge or a refund) or not (a read).
* **The timeout is fixed.** Every call opens a fresh ``httpx.AsyncClient()`` with httpx's
  default 5 s per phase, and nothing on the client changes it. Each call is therefore
  bounded by ``asyncio.wait_for(timeout_s)``; a ``timeout_s`` above 5 s is still cut at
  5 s per connect/read phase by the SDK. A bound that fires cannot tell connecting from
  waiting for the answer, so for a charge or refund it is ``OutcomeUnknown``.
* **The base URL is a class attribute** (``_BASE_URL``) of every API client, and each
  sub-client (``transactions``, ``refunds``...) is its own object. This instance's
  sub-clients get the configured URL as an instance attribute; the class is never patched.
* **There is no pool to close**: the SDK's per-call httpx client closes itself.
  :meth:`PaystackProvider.aclose` drops the client so later use fails loudly.

Paystack's transaction reference is its idempotency mechanism: a second charge with the
same reference is answered ``400 Duplicate Transaction Reference``, which this provider
turns into a verify and reports the first charge's real outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator
from pypaystack2 import AsyncPaystackClient
from pypaystack2.base_clients import AbstractAPIClient
from pypaystack2.enums import Channel, Currency
from pypaystack2.exceptions import ClientNetworkError
from pypaystack2.models import Response

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
from providers.money import MoneyError, ProviderUnits, Unit

logger = logging.getLogger(__name__)

PAYSTACK_CURRENCIES = frozenset(currency.value for currency in Currency)
# Paystack takes and reports every amount in the currency's "subunit", a hundredth, for
# every currency it lists, XOF and RWF included, which ISO 4217 gives no minor unit:
# its own WooCommerce plugin sends `$order->get_total() * 100` and reads `amount / 100`
# whatever the currency (tubiz/woo-paystack, includes/class-wc-gateway-paystack.php,
# process_redirect_payment_option and verify_paystack_transaction), and the API reference
# asks for "amount in subunit of the supported currency" (https://paystack.com/docs/api/).
# Sending ISO minor units for XOF charged a hundredth of the price (issue 34, item 4).
_SUBUNIT_SOURCE = "https://paystack.com/docs/api/ (amount in subunit); tubiz/woo-paystack"
PAYSTACK_UNITS = ProviderUnits(
    "paystack", {code: Unit(2, _SUBUNIT_SOURCE) for code in sorted(PAYSTACK_CURRENCIES)}
)
SIGNATURE_HEADER = "x-paystack-signature"
SLOW_HEALTH_FRACTION = 0.8  # of timeout_s: a health check slower than this is DEGRADED


class PaystackConfig(ProviderConfig):
    """One Paystack integration.

    Parameters:
        secret_key: ``sk_test_...`` or ``sk_live_...``; authenticates API calls and is
            the key Paystack signs webhooks with.
        public_key: ``pk_...``; kept for front-end checkout surfaces, not used server-side.
        default_currency: the integration's settlement currency, for the registry and
            admin surfaces (every :class:`PaymentRequest` names its own currency).
        callback_url: where Paystack's checkout sends the customer back; ``None`` keeps
            the URL set on the Paystack dashboard.
        base_url: Paystack's API root (a local fake in tests).
        timeout_s: seconds one API call may take end to end (the SDK itself gives up
            after 5 s per connect/read phase, whatever this says).
    """

    secret_key: SecretStr
    public_key: SecretStr
    default_currency: str = "NGN"
    callback_url: str | None = None
    base_url: str = "https://api.paystack.co"
    timeout_s: float = Field(default=5.0, gt=0, le=300)

    @field_validator("secret_key")
    @classmethod
    def _secret_key_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("sk_"):
            raise ValueError("must be a Paystack secret key (starts with 'sk_')")
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("pk_"):
            raise ValueError("must be a Paystack public key (starts with 'pk_')")
        return value

    @field_validator("default_currency")
    @classmethod
    def _paystack_currency(cls, value: str) -> str:
        if value not in PAYSTACK_CURRENCIES:
            raise ValueError(f"must be one of {', '.join(sorted(PAYSTACK_CURRENCIES))}")
        return value

    @field_validator("base_url", "callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


# --- the error seam -------------------------------------------------------------------


class _Failure(Enum):
    """What went wrong with one SDK call, before deciding which error that is."""

    KEY_REJECTED = "secret key rejected"
    THROTTLED = "rate limited by Paystack"
    NOT_SENT = "could not reach Paystack"
    NO_ANSWER = "sent, but no answer from Paystack"
    SERVER_ERROR = "Paystack answered with a server error"
    UNREADABLE = "unreadable answer from Paystack"
    DUPLICATE_REFERENCE = "reference already used at Paystack"
    NOT_FOUND = "no such transaction at Paystack"
    REFUSED = "refused by Paystack"


class _DuplicateReference(OutcomeUnknown):
    """Paystack already has this reference. process_payment verifies it; had it leaked,
    OutcomeUnknown would still make the worker verify rather than charge elsewhere."""


class _ReferenceNotFound(ProviderUnavailable):
    """A read found no such transaction; verify_payment turns it into NOT_FOUND."""


# failure -> (error when money may have moved: charge/refund, error for a read)
_FAILURE_ERRORS: dict[_Failure, tuple[type[ProviderError], type[ProviderError]]] = {
    _Failure.KEY_REJECTED: (ConfigurationError, ConfigurationError),
    _Failure.THROTTLED: (ProviderUnavailable, ProviderUnavailable),
    _Failure.NOT_SENT: (ProviderUnavailable, ProviderUnavailable),
    _Failure.NO_ANSWER: (OutcomeUnknown, ProviderUnavailable),
    _Failure.SERVER_ERROR: (OutcomeUnknown, ProviderUnavailable),
    _Failure.UNREADABLE: (OutcomeUnknown, ProviderUnavailable),
    _Failure.DUPLICATE_REFERENCE: (_DuplicateReference, ProviderUnavailable),
    _Failure.NOT_FOUND: (PaymentDeclined, _ReferenceNotFound),
    _Failure.REFUSED: (PaymentDeclined, ProviderUnavailable),
}

# What an exception out of the SDK call means; first match wins. ClientNetworkError is
# unwrapped to its httpx original first.
_TRANSPORT_FAILURES: tuple[tuple[type[BaseException], _Failure], ...] = (
    (httpx.ConnectError, _Failure.NOT_SENT),  # refused, DNS: nothing was sent
    (httpx.ConnectTimeout, _Failure.NOT_SENT),
    (httpx.PoolTimeout, _Failure.NOT_SENT),
    (httpx.UnsupportedProtocol, _Failure.NOT_SENT),
    (httpx.TimeoutException, _Failure.NO_ANSWER),  # read/write timeout: maybe processed
    (httpx.TransportError, _Failure.NO_ANSWER),  # RemoteProtocolError, ReadError: dropped
    (TimeoutError, _Failure.NO_ANSWER),  # our wait_for(timeout_s) bound
    # The SDK cannot build its Response: a JSON body that is not an object, a null
    # message, an unregistered status code (Cloudflare's 52x), a non-UTF-8 body.
    (ValueError, _Failure.UNREADABLE),  # includes pydantic.ValidationError
    (AttributeError, _Failure.UNREADABLE),
    (TypeError, _Failure.UNREADABLE),
)

_CAUGHT_FROM_SDK: tuple[type[BaseException], ...] = (
    ClientNetworkError,
    *(kind for kind, _ in _TRANSPORT_FAILURES),
)


def _is_duplicate_reference(response: Response[Any]) -> bool:
    return response.code == "duplicate_reference" or (
        "duplicate transaction reference" in (response.message or "").lower()
    )


def _is_not_found(response: Response[Any]) -> bool:
    return (
        response.status_code == 404
        or response.code == "transaction_not_found"
        or "reference not found" in (response.message or "").lower()
    )


# What a status=False answer means; first match wins.
_RESPONSE_FAILURES: tuple[tuple[Callable[[Response[Any]], bool], _Failure], ...] = (
    (lambda r: r.status_code == 401, _Failure.KEY_REJECTED),
    (lambda r: r.status_code == 429, _Failure.THROTTLED),
    (lambda r: not isinstance(r.raw, dict), _Failure.UNREADABLE),  # HTML page: raw is bytes
    (_is_duplicate_reference, _Failure.DUPLICATE_REFERENCE),
    (lambda r: r.status_code >= 500, _Failure.SERVER_ERROR),
    (_is_not_found, _Failure.NOT_FOUND),
    (lambda r: 400 <= r.status_code < 500, _Failure.REFUSED),
    (lambda r: True, _Failure.UNREADABLE),  # a 2xx/3xx saying status=false: not understood
)


class _Call(Enum):
    MOVES_MONEY = "moves money"  # charge, refund: an unanswered request may have acted
    READ = "read"  # verify, health: nothing moved, so nothing is ambiguous


# --- status tables --------------------------------------------------------------------

_VERIFY_DOC = "https://paystack.com/docs/api/transaction/#verify"
LIFECYCLE = Lifecycle(
    (
        Stage("success", OutcomeStatus.SUCCEEDED, _VERIFY_DOC),
        Stage("failed", OutcomeStatus.FAILED, _VERIFY_DOC),
        Stage("reversed", OutcomeStatus.FAILED, _VERIFY_DOC),
        # initialized, the customer has not paid (yet): the checkout link still works
        Stage("abandoned", OutcomeStatus.PENDING, _VERIFY_DOC, payable=True),
        Stage("ongoing", OutcomeStatus.PENDING, _VERIFY_DOC, payable=True),
        Stage("pending", OutcomeStatus.PENDING, _VERIFY_DOC),
        Stage("processing", OutcomeStatus.PENDING, _VERIFY_DOC),
        Stage("queued", OutcomeStatus.PENDING, _VERIFY_DOC),
    )
)
_PAYMENT_STATUSES: dict[str, OutcomeStatus] = LIFECYCLE.table("checkout")
_UNLISTED_PAYMENT_STATUS = OutcomeStatus.PENDING  # not final: reconcile asks again

_REFUND_STATUSES: dict[str, RefundStatus] = {
    "pending": RefundStatus.PENDING,
    "processing": RefundStatus.PENDING,
    "processed": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
}
_UNLISTED_REFUND_STATUS = RefundStatus.PENDING

_CHARGE_EVENTS: dict[str, OutcomeStatus] = {
    "charge.success": OutcomeStatus.SUCCEEDED,
    "charge.failed": OutcomeStatus.FAILED,
}
_REFUND_EVENTS: dict[str, RefundStatus] = {
    "refund.pending": RefundStatus.PENDING,
    "refund.processing": RefundStatus.PENDING,
    "refund.processed": RefundStatus.SUCCEEDED,
    "refund.failed": RefundStatus.FAILED,
}


# Dispute webhooks (https://paystack.com/docs/payments/webhooks/#supported-events and the
# samples in PaystackOSS/doc-code-snippets, doc/payments/webhooks/events.js): the dispute
# names the transaction by our reference; status is awaiting-merchant-feedback,
# awaiting-bank-feedback, pending or resolved; a resolved one's resolution is
# merchant-accepted or auto-accepted (the customer is refunded: lost) or declined (the
# merchant contested and kept the money: won).
_DISPUTE_EVENTS = frozenset(
    {"charge.dispute.create", "charge.dispute.remind", "charge.dispute.resolve"}
)
_DISPUTE_RESOLUTIONS = {
    "merchant-accepted": DisputeStatus.LOST,
    "auto-accepted": DisputeStatus.LOST,
    "declined": DisputeStatus.WON,
}


def _dispute_status(data: Mapping[str, Any]) -> DisputeStatus:
    if data.get("status") != "resolved":
        return DisputeStatus.OPEN
    # resolved with a resolution not listed: stays open for an operator (never a guess)
    return _DISPUTE_RESOLUTIONS.get(str(data.get("resolution")), DisputeStatus.OPEN)


def saved_method(data: Mapping[str, Any]) -> SavedMethod | None:
    """The card a successful transaction leaves, when Paystack marks it reusable: its
    ``authorization_code`` charges it again with the customer's email
    (https://paystack.com/docs/payments/recurring-charges/; the authorization object of
    the verify answer and of charge.success, see tests/fixtures/webhooks/paystack)."""
    auth = data.get("authorization")
    if not isinstance(auth, Mapping) or auth.get("reusable") is not True:
        return None
    code = _str_or_none(auth.get("authorization_code"))
    if code is None:
        return None
    last4 = _str_or_none(auth.get("last4"))
    return SavedMethod(
        token=SecretStr(code),
        brand=_str_or_none(auth.get("brand")),
        last4=last4 if last4 and last4.isdigit() and len(last4) == 4 else None,
        exp_month=_small_int(auth.get("exp_month"), 1, 12),
        exp_year=_small_int(auth.get("exp_year"), 2000, 2100),
    )


def _small_int(value: Any, low: int, high: int) -> int | None:
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if low <= number <= high else None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _subunits(value: Any) -> int | None:
    """An amount in subunits as Paystack sends it: a number, or a string of digits (its
    refund webhooks send ``"amount": "5000"``: PaystackOSS/doc-code-snippets,
    doc/payments/refunds/events.js)."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return _int_or_none(value)


def _amount_in(data: Mapping[str, Any]) -> int | None:
    """``data``'s amount in ISO minor units; None when it is missing or not exact (the
    ledger then treats a success as unknown and alerts: never paid on a guess)."""
    subunits, currency = _subunits(data.get("amount")), _str_or_none(data.get("currency"))
    if subunits is None or currency is None:
        return None
    try:
        return PAYSTACK_UNITS.from_provider(subunits, currency.upper())
    except MoneyError:
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


class PaystackProvider(PaymentProvider):
    """Paystack: hosted checkout (initialize) and saved-card charges (charge_authorization)."""

    name: ClassVar[str] = "paystack"
    display_name: ClassVar[str] = "Paystack"
    supported_currencies: ClassVar[frozenset[str]] = PAYSTACK_CURRENCIES
    config_model: ClassVar[type[ProviderConfig]] = PaystackConfig
    api_hosts: ClassVar[frozenset[str]] = frozenset({"api.paystack.co"})
    # Paystack signs webhooks without a timestamp, and documents no Retry-After.
    lifecycle: ClassVar[Lifecycle] = LIFECYCLE
    # "Authorization code does not exist or has been deactivated"
    method_gone_codes: ClassVar[Mapping[str, str]] = {"invalid_authorization_code": "revoked"}
    # Paystack gives a failed charge's reason as free text (data.gateway_response, e.g.
    # "Declined", "Insufficient Funds"), not a code: nothing tells a soft decline from a
    # hard one, so none is ever retried elsewhere.
    decline_codes: ClassVar[Mapping[str, Decline]] = {
        "declined": Decline(
            DeclineKind.HARD,
            "https://paystack.com/docs/api/transaction/#charge-authorization (gateway_response "
            "is free text)",
        ),
    }
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.PENDING_CHECKOUT,
            Capability.PARTIAL_REFUNDS,
            Capability.SIGNED_BODY,
            Capability.DISPUTE_WEBHOOKS,
            Capability.SAVES_METHODS,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._client: AsyncPaystackClient | None = None

    @property
    def settings(self) -> PaystackConfig:
        config = self.config
        assert isinstance(config, PaystackConfig)
        return config

    def on_configured(self) -> None:
        settings = self.settings
        client = AsyncPaystackClient(secret_key=settings.secret_key.get_secret_value())
        for api_client in (client, *vars(client).values()):
            if isinstance(api_client, AbstractAPIClient):
                api_client._BASE_URL = settings.base_url  # this instance only
        self._client = client

    async def aclose(self) -> None:
        self._client = None

    @property
    def _sdk(self) -> AsyncPaystackClient:
        if self._client is None:
            self.config  # noqa: B018 - raises ConfigurationError if never configured
            raise ConfigurationError("paystack provider used after aclose()", provider=self.name)
        return self._client

    # --- the seam ---------------------------------------------------------------------

    async def _call(
        self, call: _Call, what: str, request: Awaitable[Response[Any]]
    ) -> dict[str, Any] | list[Any] | None:
        """Await one SDK call within timeout_s; return Paystack's ``data`` or raise the
        error the tables assign. The only place SDK results become Tender errors."""
        try:
            response = await asyncio.wait_for(request, timeout=self.settings.timeout_s)
        except _CAUGHT_FROM_SDK as exc:
            cause = exc.original_exception if isinstance(exc, ClientNetworkError) else exc
            failure = next(
                (f for kind, f in _TRANSPORT_FAILURES if isinstance(cause, kind)),
                _Failure.NO_ANSWER,  # a ClientNetworkError without its original
            )
            detail = f"{what}: {failure.value} ({type(cause).__name__})"
            # from None: httpx exceptions carry the request, whose headers hold the key.
            raise self._error(call, failure, detail, code=None) from None
        if response.status and isinstance(response.raw, dict):
            data = response.raw.get("data")
            return data if isinstance(data, dict | list) else None
        failure = next(f for matches, f in _RESPONSE_FAILURES if matches(response))
        if failure is _Failure.REFUSED or failure is _Failure.NOT_FOUND:
            detail = response.message or failure.value
        elif failure is _Failure.KEY_REJECTED:
            detail = failure.value
        else:
            detail = f"{what}: {failure.value} (HTTP {int(response.status_code)})"
        raise self._error(call, failure, detail, code=response.code)

    def _error(self, call: _Call, failure: _Failure, detail: str, code: str | None) -> Exception:
        when_money_moves, for_read = _FAILURE_ERRORS[failure]
        error_class = when_money_moves if call is _Call.MOVES_MONEY else for_read
        message = self.scrub(detail)
        # A duplicate or a missing reference is an answer the caller resolves, not a fault.
        quiet = failure in (_Failure.DUPLICATE_REFERENCE, _Failure.NOT_FOUND)
        logger.log(
            logging.INFO if quiet else logging.WARNING, "paystack %s: %s", failure.name, message
        )
        return error_class(message, provider=self.name, code=code)

    # --- payments ---------------------------------------------------------------------

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        """Saved authorization (``payment_token``): charge it now, SUCCEEDED or
        PaymentDeclined. Otherwise initialize a checkout: PENDING with authorization_url.
        A reference Paystack already has is verified and its real outcome reported."""
        if not self.supports(request.currency):
            raise ProviderUnavailable(
                f"paystack does not take {request.currency}",
                provider=self.name,
                code="unsupported_currency",
            )
        try:
            if request.payment_token is None:
                return await self._initialize(request)
            return await self._charge_authorization(request)
        except _DuplicateReference:
            return await self._outcome_of_duplicate(request.reference)

    def _amount_out(self, amount_minor: int, currency: str) -> int:
        try:
            return PAYSTACK_UNITS.to_provider(amount_minor, currency)
        except MoneyError as exc:  # not sent: provably not charged
            raise ProviderUnavailable(
                str(exc), provider=self.name, code="amount_not_representable"
            ) from None

    def _metadata(self, request: PaymentRequest) -> dict[str, Any]:
        metadata: dict[str, Any] = dict(request.metadata)
        metadata.update(payment_id=str(request.payment_id), order_id=request.order_id)
        if request.tenant_id is not None:
            metadata["tenant_id"] = request.tenant_id
        return metadata

    async def _initialize(self, request: PaymentRequest) -> PaymentOutcome:
        data = await self._call(
            _Call.MOVES_MONEY,
            "initialize",
            self._sdk.transactions.initialize(
                amount=self._amount_out(request.amount_minor, request.currency),
                email=str(request.customer_email),
                currency=Currency(request.currency),
                reference=request.reference,
                callback_url=self.settings.callback_url,
                metadata=self._metadata(request),
                channels=[Channel(request.payment_method)],
            ),
        )
        if not isinstance(data, dict) or not data.get("authorization_url"):
            raise self._error(
                _Call.MOVES_MONEY, _Failure.UNREADABLE, "initialize: no authorization_url", None
            )
        logger.info("paystack initialized %s", request.reference)
        return PaymentOutcome(
            status=OutcomeStatus.PENDING,
            reference=str(data.get("reference") or request.reference),
            amount_minor=request.amount_minor,
            currency=request.currency,
            authorization_url=str(data["authorization_url"]),
        )

    async def _charge_authorization(self, request: PaymentRequest) -> PaymentOutcome:
        assert request.payment_token is not None
        data = await self._call(
            _Call.MOVES_MONEY,
            "charge_authorization",
            self._sdk.transactions.charge(
                amount=self._amount_out(request.amount_minor, request.currency),
                email=str(request.customer_email),
                auth_code=request.payment_token.get_secret_value(),
                reference=request.reference,
                currency=Currency(request.currency),
                metadata=self._metadata(request),
            ),
        )
        if not isinstance(data, dict):
            raise self._error(
                _Call.MOVES_MONEY, _Failure.UNREADABLE, "charge_authorization: no data", None
            )
        outcome = self._payment_outcome(data, request.reference)
        logger.info("paystack charged %s: %s", request.reference, outcome.status)
        if outcome.status is OutcomeStatus.FAILED:
            raise PaymentDeclined(
                outcome.message or "declined by Paystack", provider=self.name, code="declined"
            )
        return outcome

    async def _outcome_of_duplicate(self, reference: str) -> PaymentOutcome:
        """Paystack refused a second charge of ``reference``: report the first one's outcome."""
        logger.info("paystack already has %s; verifying instead of charging", reference)
        try:
            outcome = await self.verify_payment(reference)
        except ProviderUnavailable as exc:
            raise OutcomeUnknown(
                f"reference {reference} already exists at Paystack and verifying it failed: "
                f"{exc.message}",
                provider=self.name,
                code="duplicate_reference",
            ) from None
        if outcome.status is OutcomeStatus.NOT_FOUND:
            raise OutcomeUnknown(
                f"Paystack called {reference} a duplicate but cannot find it",
                provider=self.name,
                code="duplicate_reference",
            )
        if outcome.status is OutcomeStatus.FAILED:
            raise PaymentDeclined(
                outcome.message or "declined by Paystack", provider=self.name, code="declined"
            )
        return outcome

    def _payment_outcome(self, data: Mapping[str, Any], reference: str) -> PaymentOutcome:
        raw_status = str(data.get("status") or "")
        status = _PAYMENT_STATUSES.get(raw_status, _UNLISTED_PAYMENT_STATUS)
        return PaymentOutcome(
            status=status,
            provider_status=raw_status or None,
            reference=str(data.get("reference") or reference),
            provider_transaction_id=_str_or_none(data.get("id")),
            amount_minor=_amount_in(data),
            currency=_str_or_none(data.get("currency")),
            message=_str_or_none(data.get("gateway_response") or data.get("message")),
            code=raw_status or None,
            saved_method=saved_method(data) if status is OutcomeStatus.SUCCEEDED else None,
        )

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        """Paystack's view of ``reference``: SUCCEEDED, FAILED, PENDING or NOT_FOUND. The
        reference is Paystack's own key for a transaction (``GET /transaction/verify/
        {reference}``), so ``provider_id`` adds nothing."""
        try:
            data = await self._call(
                _Call.READ, "verify", self._sdk.transactions.verify(reference=reference)
            )
        except _ReferenceNotFound:
            return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)
        if not isinstance(data, dict):
            raise self._error(_Call.READ, _Failure.UNREADABLE, "verify: no data", None)
        return self._payment_outcome(data, reference)

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        """Refund all (``None``) or ``amount_minor`` of the transaction ``reference``.
        Paystack queues refunds, so the usual answer is PENDING; a webhook settles it."""
        if amount_minor is not None and amount_minor <= 0:
            raise ValueError(f"refund amount must be positive, got {amount_minor}")
        subunits = None
        if amount_minor is not None:  # in the payment's currency's Paystack subunit
            if currency is None:  # the ledger always says; a direct caller may not
                currency = (await self.verify_payment(reference)).currency
            if currency is None:
                raise PaymentDeclined(
                    f"no Paystack payment {reference} to refund", provider=self.name,
                    code="not_found",
                )  # fmt: skip
            subunits = self._amount_out(amount_minor, currency)
        data = await self._call(
            _Call.MOVES_MONEY,
            "refund",
            self._sdk.refunds.create(transaction=reference, amount=subunits),
        )
        if not isinstance(data, dict):
            raise self._error(_Call.MOVES_MONEY, _Failure.UNREADABLE, "refund: no data", None)
        raw_status = str(data.get("status") or "")
        logger.info("paystack refund of %s: %s", reference, raw_status)
        return RefundOutcome(
            status=_REFUND_STATUSES.get(raw_status, _UNLISTED_REFUND_STATUS),
            reference=reference,
            refund_id=_str_or_none(data.get("id")),
            amount_minor=_amount_in(data),
            currency=_str_or_none(data.get("currency")),
            message=raw_status or None,
        )

    async def health_check(self) -> HealthCheck:
        """List one transaction: proves Paystack answers and accepts the secret key
        (see providers.base.probe_health: a 401 raises ConfigurationError)."""
        return await probe_health(
            self._call(
                _Call.READ, "health check", self._sdk.transactions.get_transactions(pagination=1)
            ),
            slow_after_s=SLOW_HEALTH_FRACTION * self.settings.timeout_s,
        )

    # --- webhooks ---------------------------------------------------------------------

    def sign(self, raw_body: bytes) -> str:
        """Paystack's signature of a body: hex HMAC-SHA512 keyed with the secret key."""
        key = self.settings.secret_key.get_secret_value().encode()
        return hmac.new(key, raw_body, hashlib.sha512).hexdigest()

    def _dispute_event(self, common: dict[str, Any], data: Mapping[str, Any]) -> WebhookEvent:
        transaction = data.get("transaction") or {}
        reference = _str_or_none(transaction.get("reference"))
        currency = _str_or_none(data.get("currency"))
        amount = _amount_in({"amount": data.get("refund_amount"), "currency": currency})
        resolution = _str_or_none(data.get("resolution"))
        status = _str_or_none(data.get("status"))
        return WebhookEvent(
            **common | {"amount_minor": amount},
            reference=reference,
            dispute=DisputeOutcome(
                dispute_id=str(data["id"]),
                status=_dispute_status(data),
                amount_minor=amount,
                currency=currency.upper() if currency else None,
                reason=_str_or_none(data.get("category")),
                due_by=_timestamp(data.get("dueAt") or data.get("due_at")),
                provider_status=f"{status}/{resolution}" if resolution else status,
            ),
        )

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Check ``x-paystack-signature`` over the raw body, then read the event.

        ``charge.*`` events carry a payment status; ``refund.*`` events a RefundOutcome;
        ``charge.dispute.*`` events a DisputeOutcome;
        other events are returned with neither, for the caller to acknowledge and ignore.
        ``event_id`` is ``event:data.id:data.status``, identical on every redelivery.
        """
        given = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER), None)
        if not given:
            raise WebhookSignatureError(f"missing {SIGNATURE_HEADER}")
        if not hmac.compare_digest(given.strip().lower().encode(), self.sign(raw_body).encode()):
            raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body")
        try:
            body = load_json(raw_body)
            event, data = body["event"], body["data"]
            if not isinstance(event, str) or not isinstance(data, dict):
                raise TypeError("expected {'event': str, 'data': object}")
            return self._webhook_event(event, data, raw_body)
        except (ValueError, KeyError, TypeError) as exc:  # ValidationError is a ValueError
            raise WebhookPayloadError(
                f"unreadable paystack webhook: {type(exc).__name__}"
            ) from None

    def _webhook_event(self, event: str, data: Mapping[str, Any], raw_body: bytes) -> WebhookEvent:
        if data.get("id") is not None:
            event_id = f"{event}:{data['id']}:{data.get('status', '')}"
        else:
            event_id = f"sha256:{hashlib.sha256(raw_body).hexdigest()}"
        common: dict[str, Any] = {
            "provider": self.name,
            "event_id": event_id,
            "event_type": event,
            "amount_minor": _amount_in(data),
            "currency": _str_or_none(data.get("currency")),
        }
        if event in _REFUND_EVENTS:
            reference = _str_or_none(data.get("transaction_reference"))
            if reference is None:
                raise KeyError("transaction_reference")
            refund = RefundOutcome(
                status=_REFUND_EVENTS[event],
                reference=reference,
                # Paystack's refund events carry no refund id (its published samples): the
                # ledger matches them by payment and amount
                refund_id=_str_or_none(data.get("id")),
                amount_minor=common["amount_minor"],
                currency=common["currency"],
                message=_str_or_none(data.get("status")),
            )
            return WebhookEvent(**common, reference=reference, refund=refund)
        if event in _DISPUTE_EVENTS:
            return self._dispute_event(common, data)
        if event in _CHARGE_EVENTS:
            status = _CHARGE_EVENTS[event]
            return WebhookEvent(
                **common,
                reference=str(data["reference"]),
                status=status,
                message=_str_or_none(data.get("gateway_response")),
                saved_method=saved_method(data) if status is OutcomeStatus.SUCCEEDED else None,
            )
        return WebhookEvent(**common, reference=_str_or_none(data.get("reference")))
