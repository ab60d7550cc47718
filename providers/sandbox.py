"""The sandbox provider: deterministic, in-process, for development, demos and tests.

It behaves like a real provider where it matters for safety: a charge book keyed
by reference refuses to charge the same reference twice (a repeat reports the
first charge's outcome, as a provider's duplicate-reference answer would), so
tests can count charges. Knobs in :class:`SandboxConfig` simulate latency,
declines, an outage and an ambiguous timeout. Refused when ``TENDER_ENV=production``.

The charge book lives in process memory by default; ``charge_book`` set to a file
path shares it between processes (a SQLite file), which is how the integration
tests count charges made by a real worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from config.settings import Environment, get_settings
from providers.base import (
    Capability,
    CustomerAction,
    Decline,
    DeclineKind,
    HealthCheck,
    HealthStatus,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
    RefundStatus,
    WebhookEvent,
    load_json,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderUnavailable,
    WebhookPayloadError,
    WebhookSignatureError,
)
from providers.money import CURRENCY_EXPONENTS, from_minor

SIGNATURE_HEADER = "x-sandbox-signature"


class SandboxConfig(ProviderConfig):
    """Sandbox behaviour. Every field is safe to change at run time."""

    # Also the webhook signing key. No default: a key every installation shares would let
    # anyone sign webhooks; without one the instance refuses every webhook.
    api_key: SecretStr | None = None
    latency_ms: int = Field(default=0, ge=0, le=60_000)  # before the charge is made
    response_delay_ms: int = Field(default=0, ge=0, le=60_000)  # after charging, before answering
    decline_email_prefix: str | None = "decline"  # customer emails starting with it decline
    decline_amounts_minor: list[int] = Field(default_factory=list)
    # amounts declined softly (the issuer says try again): code soft_decline_code
    soft_decline_amounts_minor: list[int] = Field(default_factory=list)
    soft_decline_code: Literal["try_again_later", "processing_error"] = "try_again_later"
    outage: bool = False  # every call raises ProviderUnavailable
    rate_limited: bool = False  # every call is refused as over the rate, with a retry hint
    key_revoked: bool = False  # every call is refused as unauthenticated (ConfigurationError)
    slow_health_ms: int = Field(default=1000, ge=1, le=60_000)  # a slower check is DEGRADED
    ambiguous_timeout: bool = False  # charge, then raise OutcomeUnknown
    pending_methods: list[str] = Field(default_factory=lambda: ["bank_transfer"])
    charge_book: str | None = None  # a file path shared by processes; None: process memory
    # The sandbox's own client timeout, as the HTTP providers have one: an answer delayed
    # past it is OutcomeUnknown. None: no timeout of its own (the worker's call bound).
    timeout_s: float | None = Field(default=None, gt=0, le=120)


@dataclass(frozen=True)
class Charge:
    reference: str
    amount_minor: int
    currency: str
    status: OutcomeStatus
    refunded_minor: int = 0


class ChargeBook:
    """Charges by reference; refuses a second charge of the same reference."""

    def __init__(self, path: str | None = None) -> None:
        target = ":memory:" if path is None else str(Path(path).resolve())
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            target, check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL" if path else "PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS charges (reference TEXT PRIMARY KEY, amount_minor INTEGER,"
            " currency TEXT, status TEXT, refunded_minor INTEGER DEFAULT 0)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS refused (reference TEXT, at REAL)")

    def charge(
        self, reference: str, amount_minor: int, currency: str, status: OutcomeStatus
    ) -> tuple[Charge, bool]:
        """Record a charge; return (charge, created). A repeat returns the first charge."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO charges (reference, amount_minor, currency, status)"
                " VALUES (?, ?, ?, ?)",
                (reference, amount_minor, currency, status.value),
            )
            created = cursor.rowcount == 1
            if not created:
                self._db.execute("INSERT INTO refused VALUES (?, ?)", (reference, time.time()))
        charge = self.get(reference)
        assert charge is not None
        return charge, created

    def get(self, reference: str) -> Charge | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reference, amount_minor, currency, status, refunded_minor FROM charges"
                " WHERE reference = ?",
                (reference,),
            ).fetchone()
        if row is None:
            return None
        return Charge(row[0], row[1], row[2], OutcomeStatus(row[3]), row[4])

    def settle(self, reference: str, status: OutcomeStatus) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE charges SET status = ? WHERE reference = ?", (status.value, reference)
            )

    def refund(self, reference: str, amount_minor: int) -> int:
        """Add a refund; return the total refunded. Refuses more than was charged."""
        with self._lock:
            row = self._db.execute(
                "SELECT amount_minor, refunded_minor FROM charges WHERE reference = ?", (reference,)
            ).fetchone()
            if row is None:
                raise KeyError(reference)
            if row[1] + amount_minor > row[0]:
                raise ValueError("refund exceeds the amount charged")
            self._db.execute(
                "UPDATE charges SET refunded_minor = refunded_minor + ? WHERE reference = ?",
                (amount_minor, reference),
            )
            return int(row[1] + amount_minor)

    def count(self, status: OutcomeStatus | None = None) -> int:
        """How many distinct references were charged (``status``: only those ended so)."""
        with self._lock:
            if status is None:
                return int(self._db.execute("SELECT count(*) FROM charges").fetchone()[0])
            query = "SELECT count(*) FROM charges WHERE status = ?"
            return int(self._db.execute(query, (status.value,)).fetchone()[0])

    def refused_repeats(self) -> int:
        """How many times a second charge of an existing reference was refused."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM refused").fetchone()[0])

    def references(self, status: OutcomeStatus | None = None) -> list[str]:
        query = "SELECT reference FROM charges"
        args: tuple[str, ...] = ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status.value,)
        with self._lock:
            return [r[0] for r in self._db.execute(query + " ORDER BY reference", args)]


_memory_book: ChargeBook | None = None
_books: dict[str, ChargeBook] = {}
_books_lock = threading.Lock()


def charge_book(path: str | None) -> ChargeBook:
    """The process's book for ``path`` (None: the shared in-memory book)."""
    global _memory_book
    with _books_lock:
        if path is None:
            if _memory_book is None:
                _memory_book = ChargeBook()
            return _memory_book
        key = str(Path(path).resolve())
        if key not in _books:
            _books[key] = ChargeBook(key)
        return _books[key]


def _transfer_instructions(charge: Charge) -> CustomerAction:
    """A pending sandbox payment is paid by bank transfer, like a real virtual account:
    the account to pay into, the reference to quote and the amount (all made up)."""
    digits = str(int(hashlib.sha256(charge.reference.encode()).hexdigest(), 16))[:10]
    return CustomerAction(
        type="bank_transfer",
        bank_transfer={
            "bank_name": "Tender Sandbox Bank",
            "account_number": digits,
            "account_name": "Tender Sandbox Collections",
            "reference": charge.reference,
            "amount": str(from_minor(charge.amount_minor, charge.currency)),
            "currency": charge.currency,
        },
    )


class SandboxProvider(PaymentProvider):
    """A deterministic fake provider. Not for production."""

    name: ClassVar[str] = "sandbox"
    display_name: ClassVar[str] = "Sandbox (development)"
    supported_currencies: ClassVar[frozenset[str]] = frozenset(CURRENCY_EXPONENTS)
    config_model: ClassVar[type[ProviderConfig]] = SandboxConfig
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.PENDING_CHECKOUT,
            Capability.PARTIAL_REFUNDS,
            Capability.RETRY_HINTS,
            Capability.SIGNED_BODY,
        }
    )
    # The sandbox's codes, named after Stripe's (https://docs.stripe.com/declines/codes)
    decline_codes: ClassVar[Mapping[str, Decline]] = {
        "declined": Decline(DeclineKind.HARD, "providers/sandbox.py: the decline rules"),
        "try_again_later": Decline(DeclineKind.SOFT, "providers/sandbox.py, as Stripe's"),
        "processing_error": Decline(DeclineKind.OUTAGE, "providers/sandbox.py, as Stripe's"),
    }

    @classmethod
    def validate_config(cls, raw: Mapping[str, Any] | ProviderConfig) -> ProviderConfig:
        if get_settings().env is Environment.PRODUCTION:
            raise ConfigurationError(
                "the sandbox provider is refused when TENDER_ENV=production", provider=cls.name
            )
        return super().validate_config(raw)

    @property
    def settings(self) -> SandboxConfig:
        config = self.config
        assert isinstance(config, SandboxConfig)
        return config

    @property
    def book(self) -> ChargeBook:
        return charge_book(self.settings.charge_book)

    async def _call(self) -> None:
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        if self.settings.outage:
            raise ProviderUnavailable("sandbox outage switch is on", provider=self.name)
        if self.settings.rate_limited:
            raise ProviderUnavailable(
                "sandbox rate limit switch is on",
                provider=self.name,
                code="rate_limited",
                retry_after_s=1.0,
            )
        if self.settings.key_revoked:
            raise ConfigurationError(
                "sandbox api key rejected (revoked)", provider=self.name, code="key_rejected"
            )

    def _declines(self, request: PaymentRequest) -> bool:
        prefix = self.settings.decline_email_prefix
        return (
            bool(prefix and request.customer_email.lower().startswith(prefix.lower()))
            or request.amount_minor in self.settings.decline_amounts_minor
            or request.amount_minor in self.settings.soft_decline_amounts_minor
        )

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        await self._call()
        if self._declines(request):
            status = OutcomeStatus.FAILED
        elif request.payment_method in self.settings.pending_methods:
            status = OutcomeStatus.PENDING
        else:
            status = OutcomeStatus.SUCCEEDED
        charge, _created = self.book.charge(
            request.reference, request.amount_minor, request.currency, status
        )
        delay_s = self.settings.response_delay_ms / 1000
        if self.settings.timeout_s is not None and delay_s > self.settings.timeout_s:
            # as an HTTP client would: wait out its timeout, then say it does not know
            await asyncio.sleep(self.settings.timeout_s)
            raise OutcomeUnknown(
                f"sandbox did not answer in {self.settings.timeout_s} s after charging",
                provider=self.name,
            )
        if delay_s:
            await asyncio.sleep(delay_s)
        if self.settings.ambiguous_timeout:
            raise OutcomeUnknown("sandbox timed out after charging", provider=self.name)
        if charge.status is OutcomeStatus.FAILED:
            if request.amount_minor in self.settings.soft_decline_amounts_minor:
                code = self.settings.soft_decline_code
                raise PaymentDeclined(
                    f"Declined softly by the sandbox ({code})", provider=self.name, code=code
                )
            raise PaymentDeclined(
                "Declined by the sandbox decline rule", provider=self.name, code="declined"
            )
        return self._outcome(charge)

    def _outcome(self, charge: Charge) -> PaymentOutcome:
        return PaymentOutcome(
            status=charge.status,
            reference=charge.reference,
            provider_transaction_id=f"sbx_{charge.reference}",
            amount_minor=charge.amount_minor,
            currency=charge.currency,
            authorization_url=(
                f"https://sandbox.tender.invalid/pay/{charge.reference}"
                if charge.status is OutcomeStatus.PENDING
                else None
            ),
            next_action=_transfer_instructions(charge)
            if charge.status is OutcomeStatus.PENDING
            else None,
            message="Declined by the sandbox decline rule"
            if charge.status is OutcomeStatus.FAILED
            else None,
        )

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        await self._call()
        charge = self.book.get(reference)
        if charge is None:
            return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)
        return self._outcome(charge)

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        await self._call()
        charge = self.book.get(reference)
        if charge is None or charge.status is not OutcomeStatus.SUCCEEDED:
            raise PaymentDeclined(f"no successful charge {reference} to refund", provider=self.name)
        amount = (
            charge.amount_minor - charge.refunded_minor if amount_minor is None else amount_minor
        )
        if amount <= 0:  # a negative "refund" would give back refunded headroom
            raise PaymentDeclined(
                f"nothing to refund: {amount} minor units of {reference}",
                provider=self.name,
                code="invalid_refund_amount",
            )
        try:
            refunded = self.book.refund(reference, amount)
        except ValueError as exc:
            raise PaymentDeclined(
                str(exc), provider=self.name, code="refund_exceeds_charge"
            ) from None
        return RefundOutcome(
            status=RefundStatus.SUCCEEDED,
            reference=reference,
            # One id per refund: two refunds of one amount are two refunds in the ledger.
            refund_id=f"sbx_rf_{reference}_{refunded}",
            amount_minor=amount,
            currency=charge.currency,
        )

    async def health_check(self) -> HealthCheck:
        started = time.perf_counter()
        try:
            await self._call()
        except ProviderUnavailable as exc:  # a rejected key raises: the instance is in error
            return HealthCheck(
                status=HealthStatus.UNHEALTHY,
                message=exc.message,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        latency_ms = (time.perf_counter() - started) * 1000
        slow = latency_ms >= self.settings.slow_health_ms
        return HealthCheck(
            status=HealthStatus.DEGRADED if slow else HealthStatus.HEALTHY,
            message=f"slow: {latency_ms:.0f} ms" if slow else "ok",
            latency_ms=latency_ms,
        )

    def sign(self, raw_body: bytes) -> str:
        """The signature the sandbox puts on its webhooks: hex HMAC-SHA256 of the body."""
        if self.settings.api_key is None:
            raise WebhookSignatureError(
                "this sandbox instance has no api_key to sign webhooks with"
            )
        key = self.settings.api_key.get_secret_value().encode()
        return hmac.new(key, raw_body, hashlib.sha256).hexdigest()

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        given = {k.lower(): v for k, v in headers.items()}.get(SIGNATURE_HEADER)
        if not given or not hmac.compare_digest(given, self.sign(raw_body)):
            raise WebhookSignatureError("missing or invalid x-sandbox-signature")
        try:
            body = load_json(raw_body)
            status = OutcomeStatus(body["status"])
            return WebhookEvent(
                provider=self.name,
                event_id=str(body["id"]),
                event_type=str(body["type"]),
                reference=str(body["reference"]),
                status=status,
                amount_minor=body.get("amount_minor"),
                currency=body.get("currency"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookPayloadError(f"unreadable sandbox webhook: {exc}") from None

    def settle(self, reference: str, status: OutcomeStatus) -> None:
        """Test and demo hook: a pending charge completes (as a customer finishing a redirect)."""
        self.book.settle(reference, status)
