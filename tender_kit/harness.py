"""The harness a provider plugin's conformance run drives: how to make a configured plugin,
requests the provider answers each way, the provider's own books, a signed webhook, and
the fault switches of its fake (issue 39).

A plugin author subclasses :class:`Harness` for their provider and names it in their
suite (``tender_kit.ConformanceSuite``); Tender's own plugins use the same class
(``tests/conformance/harnesses.py``). Methods that raise ``NotImplementedError`` are the
optional lifecycles: the suite drives them only for plugins that declare the matching
``Capability``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from providers.base import (
    DisputeStatus,
    OutcomeStatus,
    PaymentProvider,
    PaymentRequest,
    derive_reference,
)
from providers.sandbox import SIGNATURE_HEADER, SandboxProvider, charge_book

# "pending_capture": a charge the provider accepts but completes later (PENDING_CAPTURE)
Outcome = Literal["succeed", "decline", "pending", "pending_capture"]
Fault = Literal["stall_after_recording", "server_error", "rate_limited", "down", "revoked_key"]
TIMEOUT_S = 0.6  # the client timeout harnesses configure; a "stall" outlasts it
HEALTH_TIMEOUT_S = 3.0  # the slow health check's client timeout (DEGRADED past 2.4 s)
HEALTH_HOLD_S = 2.5  # how long the fake holds that check's answer


class Harness(ABC):
    """A provider and its fake, as the conformance suite sees them."""

    plugin_class: ClassVar[type[PaymentProvider]]
    currency: ClassVar[str] = "NGN"
    stale_s: ClassVar[float] = 3600  # a webhook this old is a replay (SIGNED_TIMESTAMPS)

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """A valid config reaching the fake."""

    def plugin(self, **overrides: Any) -> PaymentProvider:
        plugin = self.plugin_class()
        plugin.configure({**self.config(), **overrides})
        return plugin

    @abstractmethod
    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        """A payment request the provider will answer with ``outcome``."""

    @abstractmethod
    def charges(self, reference: str) -> int:
        """How many charges the provider's own books hold for ``reference``."""

    @abstractmethod
    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        """A payment-success webhook for a charged ``reference``, signed as the provider
        signs it ``age_s`` ago (where signatures carry a time): (raw body, headers). Where
        webhooks are unsigned (``Capability.UNSIGNED_WEBHOOKS``), also for a reference the
        customer has not paid: the forgery the plugin must see through."""

    def tamper(self, raw: bytes) -> bytes:
        """The webhook body claiming a different amount."""
        event = json.loads(raw)
        target = event["data"] if isinstance(event.get("data"), dict) else event
        target["amount"] = 1
        return json.dumps(event).encode()

    @abstractmethod
    def fault(self, kind: Fault) -> contextlib.AbstractContextManager[PaymentProvider]:
        """The plugin to call while the fault lasts."""

    @contextlib.contextmanager
    def slow_health(self) -> Iterator[PaymentProvider]:
        """A plugin whose health check answers slowly, but in time."""
        raise NotImplementedError
        yield  # pragma: no cover

    # The customer on the provider's checkout page, and the provider finishing its own work:
    # what the lifecycle checks drive (each harness whose plugin declares the capability).

    def customer_declines(self, reference: str) -> None:
        """The customer's attempt on the checkout of ``reference`` is declined (for a
        ``CONFIRMED_LATER`` provider: the customer refuses the request on their device)."""
        raise NotImplementedError

    def customer_pays(self, reference: str) -> None:
        """The customer pays the checkout of ``reference`` (``CONFIRMED_LATER``: approves the
        request on their device); raises if it is not payable."""
        raise NotImplementedError

    def complete_capture(self, reference: str) -> None:
        """The provider completes the pending capture of ``reference``."""
        raise NotImplementedError

    def refunds_wait(self, wait: bool) -> None:
        """New refunds stay pending at the provider (True) until :meth:`end_refund`."""
        raise NotImplementedError

    def end_refund(self, refund_id: str, *, paid: bool) -> None:
        """The provider finishes a pending refund: paid out, or failed (no money moved)."""
        raise NotImplementedError

    def reverse_refund(self, refund_id: str) -> None:
        """A refund that had succeeded fails at the provider afterwards (the bank returned
        it); NotImplementedError where the provider documents no such thing."""
        raise NotImplementedError

    def dispute_webhook(
        self, reference: str, outcome: DisputeStatus
    ) -> tuple[bytes, dict[str, str]]:
        """A signed dispute webhook for the charged ``reference``: opened (OPEN), or closed
        won or lost (DISPUTE_WEBHOOKS)."""
        raise NotImplementedError

    def new_request(self, **fields: Any) -> PaymentRequest:
        defaults: dict[str, Any] = {
            "payment_id": uuid.uuid4(),
            "reference": derive_reference(str(uuid.uuid4())),
            "order_id": "order-conformance",
            "amount_minor": 50_000,
            "currency": self.currency,
            "customer_email": "ada@example.com",
        }
        return PaymentRequest(**(defaults | fields))


class SandboxHarness(Harness):
    """Tender's sandbox provider and its charge book: the reference harness (the smallest
    complete one) and what the kit's own tests run."""

    plugin_class = SandboxProvider

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.book_path = str(folder / "conformance-charges.db")

    def config(self) -> dict[str, Any]:
        return {
            "charge_book": self.book_path,
            "api_key": "sk_sandbox_conformance_0123456789",
            "timeout_s": TIMEOUT_S,
        }

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        email = "decline-me@example.com" if outcome == "decline" else "ada@example.com"
        method = "bank_transfer" if outcome == "pending" else "card"
        return self.new_request(
            customer_email=email, payment_method=method, amount_minor=amount_minor
        )

    def charges(self, reference: str) -> int:
        charge = charge_book(self.book_path).get(reference)
        return 1 if charge is not None and charge.status is OutcomeStatus.SUCCEEDED else 0

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        charge = charge_book(self.book_path).get(reference)
        assert charge is not None
        body = json.dumps(
            {
                "id": f"evt_{reference}",
                "type": "charge.success",
                "reference": reference,
                "status": "succeeded",
                "amount_minor": charge.amount_minor,
                "currency": charge.currency,
            }
        ).encode()
        signer = self.plugin()
        assert isinstance(signer, SandboxProvider)
        return body, {SIGNATURE_HEADER: signer.sign(body)}

    @contextlib.contextmanager
    def fault(self, kind: Fault) -> Iterator[PaymentProvider]:
        switches: dict[str, dict[str, Any]] = {
            "stall_after_recording": {"response_delay_ms": int(TIMEOUT_S * 2000)},
            "server_error": {"ambiguous_timeout": True},  # sent and charged, no answer
            "rate_limited": {"rate_limited": True},
            "down": {"outage": True},
            "revoked_key": {"key_revoked": True},
        }
        yield self.plugin(**switches[kind])

    @contextlib.contextmanager
    def slow_health(self) -> Iterator[PaymentProvider]:
        yield self.plugin(latency_ms=250, slow_health_ms=200)
