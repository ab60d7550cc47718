"""The provider contract: one async interface and the pydantic models it speaks.

A plugin is one subclass of :class:`PaymentProvider` plus an entry point in the
``tender.providers`` group. It declares its configuration as a pydantic model
(secrets typed ``SecretStr``) so every surface can validate and mask from it.
Errors are the classes in :mod:`providers.errors`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from providers.errors import ConfigurationError, ProviderError
from providers.money import MAX_MINOR, normalize_currency
from providers.redaction import sanitize

REFERENCE_PATTERN = r"^[A-Za-z0-9.=\-]{1,100}$"


def derive_reference(idempotency_key: str, tenant_id: str | None = None) -> str:
    """The provider reference for a payment, derived from its idempotency key.

    Deterministic, so a retried or redelivered charge carries the same reference
    and the provider itself refuses to charge it twice. Letters, digits and '-'
    only, which every provider accepts.
    """
    digest = hashlib.blake2b(f"{tenant_id or ''}\x1f{idempotency_key}".encode(), digest_size=16)
    return f"tdr-{digest.hexdigest()}"


# How deep a webhook's JSON may nest: providers' events nest a few levels. Deeper is refused
# before parsing (json.loads recurses, and 10,000 levels raise RecursionError: a 500).
MAX_JSON_DEPTH = 64
_JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]")


def load_json(raw: bytes | str) -> Any:
    """``json.loads`` of a webhook body, refusing (ValueError, which each plugin reports as
    an unreadable event: 400) one nested deeper than ``MAX_JSON_DEPTH`` before parsing it.
    The scan drops strings, then walks the brackets left: linear in the body's size."""
    data = raw.encode() if isinstance(raw, str) else raw
    depth = 0
    for char in _NOT_BRACKETS.sub(b"", _JSON_STRINGS.sub(b"", data)):
        depth += 1 if char in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(data)


def utcnow() -> datetime:
    return datetime.now(UTC)


class OutcomeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"  # redirect, bank transfer or awaiting a webhook
    FAILED = "failed"
    NOT_FOUND = "not_found"  # verify only: the provider has no such reference


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    FAILED = "failed"


class DisputeStatus(StrEnum):
    """Where a dispute (a chargeback, an inquiry, a PayPal claim) stands, for the ledger."""

    OPEN = "open"  # the customer's bank or PayPal is deciding; the merchant may respond
    WON = "won"  # closed in the merchant's favour: the money stays (or comes back)
    LOST = "lost"  # closed in the customer's favour: the money went back to the customer


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


PaymentMethod = Literal["card", "bank_transfer", "ussd", "mobile_money", "bank"]
MetadataValue = str | int | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PaymentRequest(_Model):
    """What a plugin needs to charge once. Amounts are integer minor units."""

    payment_id: UUID
    reference: str = Field(pattern=REFERENCE_PATTERN)
    order_id: str = Field(min_length=1, max_length=200)
    # Strict: a bool or a float is a caller's bug, not an amount (True would charge 1).
    amount_minor: Annotated[int, Field(strict=True, gt=0, le=MAX_MINOR)]
    currency: str
    customer_email: EmailStr
    payment_method: PaymentMethod = "card"
    # A reusable authorization the provider issued earlier (saved card); secret.
    payment_token: SecretStr | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    tenant_id: str | None = None
    # A saved payment method's customer at the provider (Stripe's cus_...), and whether
    # the charge is merchant-initiated with nobody present (recurring billing)
    customer_id: str | None = None
    off_session: bool = False
    # the customer agreed to save the method they pay with (a checkout)
    save_method: bool = False

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str) -> str:
        return normalize_currency(value)


class CustomerAction(_Model):
    """What billing must show the customer for a pending payment: a page to send them to,
    the bank details to pay to, or the client secret an SDK completes the step with (the
    customer's, scoped to this one payment, never the merchant's key)."""

    # redirect | bank_transfer | sdk, or the provider's own word (Stripe's next_action.type)
    type: str
    url: str | None = None
    client_secret: str | None = None
    # bank transfer instructions: account, bank, the reference to quote, amount, expiry
    bank_transfer: dict[str, str] | None = None


class SavedMethod(_Model):
    """A reusable payment method a successful checkout left at the provider, when the
    customer agreed to save it: the token charges it again (secret), the rest is for
    display."""

    token: SecretStr
    provider_customer_id: str | None = None
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    wallet_email: str | None = None


class PaymentOutcome(_Model):
    """The provider's answer to a charge or a verify."""

    status: OutcomeStatus
    reference: str
    provider_transaction_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    # A success whose provider names no amount, from a provider that charges exactly what
    # it was asked or nothing (Capability.FIXED_AMOUNT): the amount asked is the one paid.
    amount_as_asked: bool = False
    authorization_url: str | None = None
    # what the customer must do for a pending payment (authorization_url alone says "go
    # there"; a bank transfer or an SDK step needs more)
    next_action: CustomerAction | None = None
    message: str | None = None
    code: str | None = None
    # The provider's own status word, as the plugin's lifecycle lists it: tells a pending
    # payment the customer can still pay from one whose money is in flight.
    provider_status: str | None = None
    # a succeeded checkout's reusable method (Capability.SAVES_METHODS)
    saved_method: SavedMethod | None = None


def customer_action(outcome: PaymentOutcome) -> dict[str, Any] | None:
    """What a pending ``outcome`` asks of the customer, as the ledger stores it and events
    carry it: the plugin's action, else a redirect to its ``authorization_url``."""
    if outcome.next_action is not None:
        action = outcome.next_action
        if action.url is None and outcome.authorization_url:
            action = action.model_copy(update={"url": outcome.authorization_url})
        return action.model_dump(exclude_none=True)
    if outcome.authorization_url:
        return {"type": "redirect", "url": outcome.authorization_url}
    return None


class RefundOutcome(_Model):
    status: RefundStatus
    reference: str
    refund_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    message: str | None = None


class DisputeOutcome(_Model):
    """A provider's dispute of a payment, as its webhook reports it."""

    dispute_id: str
    status: DisputeStatus
    amount_minor: int | None = None
    currency: str | None = None
    reason: str | None = None
    # when the merchant's response (evidence) is due; None once closed or when not given
    due_by: datetime | None = None
    provider_status: str | None = None  # the provider's own word, for operators


class HealthCheck(_Model):
    status: HealthStatus
    message: str = ""
    latency_ms: float = Field(ge=0)
    checked_at: datetime = Field(default_factory=utcnow)


class WebhookEvent(_Model):
    """A verified webhook, reduced to what the ledger needs.

    ``event_id`` is stable across the provider's redeliveries so Tender can dedupe.
    """

    provider: str
    event_id: str
    event_type: str
    reference: str | None = None
    status: OutcomeStatus | None = None
    refund: RefundOutcome | None = None
    dispute: DisputeOutcome | None = None
    saved_method: SavedMethod | None = None  # a success's reusable method, where reported
    # The provider's own id for the payment (the one verify reads it by), for a provider
    # whose webhooks name no reference of Tender's (M-Pesa's callback names only its
    # CheckoutRequestID): the ledger finds the payment by it when ``reference`` is None.
    provider_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    amount_as_asked: bool = False  # as PaymentOutcome.amount_as_asked
    message: str | None = None


class ProviderConfig(BaseModel):
    """Base of every plugin's config model. Secret fields must be ``SecretStr``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Fields that decide where requests, and the secrets in them, are sent. The registry
    # checks their hosts (providers.destinations) and refuses to change one unless the
    # secrets are given again in the same change: an address alone must not redirect keys.
    destination_fields: ClassVar[frozenset[str]] = frozenset({"base_url"})

    # How long a checkout waits on its customer before Tender ends it, in seconds. None:
    # the plugin's documented default (PaymentProvider.checkout_lifetime_s), also the most
    # a plugin accepts. An hour at least: shorter lets pages expire under customers' hands.
    # The provider account this instance's keys belong to, when two instances share one
    # (a key rotation, a second instance with other routing): saved payment methods issued
    # through one may be charged through the other. None: the instance is its own account.
    account_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The provider account these keys belong to; instances naming the same "
        "account share saved payment methods.",
    )
    checkout_lifetime_s: float | None = Field(
        default=None,
        ge=3600,
        description="How long a checkout waits on its customer, in seconds (default: the "
        "provider's documented lifetime).",
    )

    @classmethod
    def secret_fields(cls) -> frozenset[str]:
        """Field names whose values are secret, read from the type annotations."""
        return frozenset(
            name
            for name, info in cls.model_fields.items()
            if info.annotation is not None and SecretStr in _flatten(info.annotation)
        )


def _flatten(annotation: Any) -> set[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return {annotation}
    found: set[Any] = set()
    for arg in args:
        found |= _flatten(arg)
    return found


def describe_validation_error(exc: ValidationError, *, prefix: str = "config") -> str:
    """'config.secret_key: Field required; ...': names the fields, never echoes values."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{prefix}.{where}: {error['msg']}")
    return "; ".join(parts)


async def probe_health(probe: Awaitable[object], *, slow_after_s: float) -> HealthCheck:
    """A provider's health from one cheap authenticated call: UNHEALTHY with the reason when
    the provider errs, DEGRADED when it answers slower than ``slow_after_s``. A rejected key
    is raised (ConfigurationError): no health status fixes it, the instance is in error."""
    started = time.perf_counter()
    try:
        await probe
    except ConfigurationError:
        raise
    except ProviderError as exc:
        return HealthCheck(
            status=HealthStatus.UNHEALTHY,
            message=exc.message,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
    latency_ms = (time.perf_counter() - started) * 1000
    slow = latency_ms > slow_after_s * 1000
    return HealthCheck(
        status=HealthStatus.DEGRADED if slow else HealthStatus.HEALTHY,
        message=f"slow: {latency_ms:.0f} ms" if slow else "ok",
        latency_ms=latency_ms,
    )


Flow = Literal["checkout", "saved"]
FLOWS: tuple[Flow, ...] = ("checkout", "saved")


@dataclass(frozen=True)
class Stage:
    """One row of a provider's payment lifecycle: what one of its statuses means for Tender.

    ``flows``: the flows it applies to (a hosted checkout the customer can still pay on, or
    a saved method charged with nobody present); ``payable``: the customer can still pay
    in this status, so it is never final; ``source``: the provider's documentation of it.
    """

    status: str
    outcome: OutcomeStatus
    source: str
    flows: tuple[Flow, ...] = FLOWS
    payable: bool = False

    @property
    def final(self) -> bool:
        return self.outcome in (OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED)


@dataclass(frozen=True)
class Lifecycle:
    """A provider's payment lifecycle as data: one table read by charge, verify and
    webhooks alike (docs/providers.md shows it). A status it does not list waits
    (PENDING): a payable order is never failed on a guess."""

    stages: tuple[Stage, ...]

    def table(self, flow: Flow) -> dict[str, OutcomeStatus]:
        return {stage.status: stage.outcome for stage in self.stages if flow in stage.flows}

    def outcome(self, status: str, flow: Flow) -> OutcomeStatus:
        return self.table(flow).get(status, OutcomeStatus.PENDING)

    def payable(self, status: str) -> bool | None:
        """Whether the customer can still pay in ``status`` (None: not listed)."""
        stages = [stage for stage in self.stages if stage.status == status]
        return any(stage.payable for stage in stages) if stages else None


class DeclineKind(StrEnum):
    """What a provider's decline code says about trying again (the plugin's table,
    ``PaymentProvider.decline_codes``, cites the provider's documentation per code)."""

    HARD = "hard"  # the customer's money or card said no: never retried
    SOFT = "soft"  # the issuer said "try again" (do not honour, try later, re-enter)
    OUTAGE = "outage"  # the provider or issuer failed to process it: not the customer's no


@dataclass(frozen=True)
class Decline:
    kind: DeclineKind
    source: str  # where the provider documents this code's meaning


def retry_reference(reference: str) -> str:
    """The reference a soft decline's retry charges under: a new one (a provider that
    declined the first must not meet it again), derived, so a redelivery derives the same."""
    return f"{reference}-r2"


class Capability(StrEnum):
    """What a provider can do or tell; the conformance suite checks each declared one and
    checks that an undeclared one is really absent (tests/conformance)."""

    PENDING_CHECKOUT = "pending_checkout"  # a charge without a token waits on the customer
    PARTIAL_REFUNDS = "partial_refunds"
    RETRY_HINTS = "retry_hints"  # a rate limit says when to come back
    # Webhook signatures cover the raw body, byte for byte: checked by the plugin
    # (an HMAC) or by the provider's own API on the body as received (PayPal's
    # verify-webhook-signature, over a CRC32 of the bytes it sent)
    SIGNED_BODY = "signed_body"
    SIGNED_TIMESTAMPS = "signed_timestamps"  # webhook signatures cover a timestamp
    # Lifecycles (issue 33), each played by the plugin's fake and checked by conformance:
    # a checkout can be made unpayable at expiry (expire_checkout does it)
    EXPIRES_CHECKOUT = "expires_checkout"
    # a declined attempt on a checkout leaves it payable: verify says pending, not failed
    RETRY_AFTER_DECLINE = "retry_after_decline"
    # a hosted checkout has no transaction at the provider until the customer's first try
    LAZY_CHECKOUT = "lazy_checkout"
    # a capture or charge can stay pending at the provider and complete later
    PENDING_CAPTURE = "pending_capture"
    # verify reads a payment by the provider's id only (no lookup by reference): without
    # one, crash recovery repeats the charge, which the provider's idempotency makes a
    # replay (the same order and capture), instead of verifying
    REPLAYS_TO_RECOVER = "replays_to_recover"
    # refund_status reads a refund back by the provider's id: reconcile settles pending
    # refunds with it where no webhook will (PayPal sends none for a refund that fails)
    READS_REFUNDS = "reads_refunds"
    # a successful checkout reports the reusable method it leaves (SavedMethod), saved
    # when the payment asked for it
    SAVES_METHODS = "saves_methods"
    # the provider notifies disputes (chargebacks, inquiries, claims) by webhook: the plugin
    # reports them as WebhookEvent.dispute, with the payment's reference
    DISPUTE_WEBHOOKS = "dispute_webhooks"
    # What a provider cannot do, declared so that the suite holds its plugin to the safe
    # alternative (issue 39; M-Pesa Express is the example, examples/tender-mpesa):
    # a charge's answer is never final: the customer approves on their own device and the
    # provider confirms later (callback or status query); verify then tells
    CONFIRMED_LATER = "confirmed_later"
    # the provider takes no idempotency key and cannot look a payment up by Tender's
    # reference: the same charge sent twice is two charges, so a plugin's verify without
    # the provider's id answers OutcomeUnknown (never NOT_FOUND, which would let crash
    # recovery charge again) and Tender never sends a charge twice
    UNKEYED_CHARGES = "unkeyed_charges"
    # webhooks carry no signature at all: the plugin asks the provider's API about every
    # one and reports what the API says, never what the body claims
    UNSIGNED_WEBHOOKS = "unsigned_webhooks"
    # the API has no refund call (refunds are made in the provider's own portal): refund()
    # refuses every request with PaymentDeclined("refunds_unsupported") and calls nothing
    NO_API_REFUNDS = "no_api_refunds"
    # the provider charges exactly the amount it was asked for or nothing (the customer
    # approves that amount), and its status reads name no amount: a success may then say
    # ``amount_as_asked`` instead of an amount, and the ledger's amount is the one paid
    FIXED_AMOUNT = "fixed_amount"


class PaymentProvider(ABC):
    """The interface every payment-provider plugin implements.

    Lifecycle: the registry instantiates the class, calls :meth:`configure` with
    the instance's (decrypted) config, then calls the async methods from the
    worker's event loop. :meth:`aclose` releases connection pools.
    """

    name: ClassVar[str]
    provider_type: ClassVar[str] = "payment"
    display_name: ClassVar[str]
    supported_currencies: ClassVar[frozenset[str]]
    config_model: ClassVar[type[ProviderConfig]]
    # The provider's official API hosts: in production the only ones its keys may go to.
    api_hosts: ClassVar[frozenset[str]] = frozenset()
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # The provider's payment statuses and what each means (empty: the plugin has none of
    # its own, e.g. the sandbox); the conformance suite checks every row.
    lifecycle: ClassVar[Lifecycle] = Lifecycle(())
    # How long a checkout may wait on its customer before Tender gives up on it: a hosted
    # page may have no transaction at the provider until the customer's first attempt, so
    # "not found" is not "not paid" until then. 24 h is Stripe Checkout's documented
    # lifetime (https://docs.stripe.com/api/checkout/sessions/create, expires_at); a plugin
    # whose provider documents another sets its own.
    checkout_lifetime_s: ClassVar[float] = 24 * 3600
    # Decline codes that say a saved method is gone for good at the provider: "expired"
    # (the card's date passed) or "revoked" (the token no longer exists); the ledger then
    # stops charging the method and tells billing (payment_method.expired / .revoked).
    method_gone_codes: ClassVar[Mapping[str, str]] = {}
    # The provider's decline codes, each hard, soft or outage, with the documentation it
    # comes from. Only soft and outage codes are ever retried on another instance (when
    # the tenant switched retries on); a code not listed is treated as hard.
    decline_codes: ClassVar[Mapping[str, Decline]] = {}

    @classmethod
    def decline_kind(cls, code: str | None) -> DeclineKind:
        found = cls.decline_codes.get(code) if code else None
        return found.kind if found is not None else DeclineKind.HARD

    def __init__(self) -> None:
        self._config: ProviderConfig | None = None

    @classmethod
    def validate_config(cls, raw: Mapping[str, Any] | ProviderConfig) -> ProviderConfig:
        """Validate a raw config against the plugin's model; ConfigurationError names fields."""
        if isinstance(raw, cls.config_model):
            return raw
        try:
            config = cls.config_model.model_validate(dict(raw))
        except ValidationError as exc:
            raise ConfigurationError(
                f"invalid {cls.name} config: {describe_validation_error(exc)}", provider=cls.name
            ) from None
        lifetime = config.checkout_lifetime_s
        if lifetime is not None and lifetime > cls.checkout_lifetime_s:
            raise ConfigurationError(
                f"invalid {cls.name} config: checkout_lifetime_s: at most "
                f"{cls.checkout_lifetime_s:.0f} (the provider's own limit), got {lifetime:.0f}",
                provider=cls.name,
            )
        return config

    def configure(self, config: Mapping[str, Any] | ProviderConfig) -> None:
        """Validate and apply the instance's config; raise ConfigurationError if bad."""
        self._config = self.validate_config(config)
        self.on_configured()

    def on_configured(self) -> None:  # noqa: B027 - optional hook
        """Hook for plugins: build clients once the config is known."""

    @property
    def config(self) -> ProviderConfig:
        if self._config is None:
            raise ConfigurationError(f"{self.name} used before configure()", provider=self.name)
        return self._config

    def secret_values(self) -> list[str]:
        """This instance's secret config values (none before configure)."""
        if self._config is None:
            return []
        values = (getattr(self._config, name, None) for name in self._config.secret_fields())
        return [v.get_secret_value() for v in values if isinstance(v, SecretStr)]

    def scrub(self, text: str) -> str:
        """Provider text made safe for the ledger, logs and events (providers.redaction):
        plugins pass every error message they build from a provider's answer through it."""
        return sanitize(text, self.secret_values())

    @classmethod
    def supports(cls, currency: str) -> bool:
        return currency in cls.supported_currencies

    @property
    def lifetime_s(self) -> float:
        """How long this instance's checkouts wait on the customer (its config, else the
        plugin's documented default)."""
        configured = self._config.checkout_lifetime_s if self._config is not None else None
        return configured or type(self).checkout_lifetime_s

    async def expire_checkout(self, reference: str, *, provider_id: str | None = None) -> bool:
        """Make the payment's checkout unpayable, where the provider allows it; True if it
        did. Called by reconcile at expiry before its last verify. The default does
        nothing: a provider with no such call (or whose page expires by itself) relies on
        that last verify, and a success reported later still wins."""
        return False

    @abstractmethod
    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        """Charge once. Succeeded, pending (redirect/webhook) or failed; errors per errors.py."""

    @abstractmethod
    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        """Ask the provider what happened to ``reference`` (NOT_FOUND if it never arrived).

        ``provider_id`` is the provider's own id for the payment when the ledger holds one
        (an order, PaymentIntent, Checkout Session or transaction id): a plugin reads the
        payment by it, and looks it up by reference only without one. Verify never
        creates anything at the provider."""

    @abstractmethod
    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        """Refund the whole payment (``None``) or part of it.

        ``refund_key`` is Tender's id of this refund: where the provider takes an
        idempotency key, the plugin derives it from this, so a retry of one refund is one
        refund and two refunds of the same amount are two. ``provider_id`` is the
        provider's own id for the payment when the ledger holds one (as for verify): the
        payment is read by it, never searched for or re-created. ``currency`` is the
        payment's (the ledger's), for a provider whose units differ by currency."""

    async def refund_status(
        self, reference: str, refund_id: str, *, currency: str | None = None
    ) -> RefundOutcome | None:
        """The refund ``refund_id`` (the provider's id) as the provider has it now, read by
        that id: reconcile asks it of refunds still pending. None: this provider has no
        such read (its webhooks settle refunds); a plugin that has one declares
        ``Capability.READS_REFUNDS``."""
        return None

    @abstractmethod
    async def health_check(self) -> HealthCheck:
        """A cheap call that proves the provider answers and accepts our keys."""

    @abstractmethod
    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Verify the signature over the raw body, then parse;
        a bad signature raises :class:`~providers.errors.WebhookSignatureError`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connection pools; called when the registry drops this object."""

    def __repr__(self) -> str:
        state = "configured" if self._config is not None else "unconfigured"
        return f"<{type(self).__name__} {self.name} {state}>"
