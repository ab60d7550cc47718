"""One harness per provider plugin: how the conformance suite drives it against its fake.

Adding a provider to the suite is adding one class here (and its name to ``HARNESSES``):
a valid config pointing at the provider's fake, requests that succeed, decline or wait on
the customer, the provider's own books, a signed webhook, and the fault switches. The
suite (``test_provider_contract.py``) does the rest, through the plugin's real SDK or
HTTP client.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from providers.base import (
    DisputeStatus,
    PaymentProvider,
    PaymentRequest,
)
from providers.flutterwave import FlutterwaveProvider
from providers.paypal import PayPalProvider
from providers.paystack import PaystackProvider
from providers.stripe import StripeProvider
from tender_kit.harness import (
    HEALTH_HOLD_S,
    HEALTH_TIMEOUT_S,
    TIMEOUT_S,
    Fault,
    Harness,
    Outcome,
    SandboxHarness,
)
from tests.fakes.flutterwave.server import FakeFlutterwave
from tests.fakes.paypal.server import FakePayPal
from tests.fakes.paystack.server import (
    DECLINED_AUTHORIZATION,
    GOOD_AUTHORIZATION,
    FakePaystack,
    unused_local_url,
)
from tests.fakes.stripe.server import FakeStripe


class FakeServerHarness(Harness):
    """A provider behind an HTTP fake with ``fault`` switches and a ``slow_s`` hold."""

    fake: Any
    faults: ClassVar[dict[str, str]] = {
        "stall_after_recording": "slow",
        "server_error": "5xx",
        "rate_limited": "429",
    }
    revoked: ClassVar[dict[str, str]]  # a config change whose key the fake refuses

    def close(self) -> None:
        self.fake.stop()

    @contextlib.contextmanager
    def fault(self, kind: Fault) -> Iterator[PaymentProvider]:
        if kind == "down":
            yield self.plugin(base_url=unused_local_url())
            return
        if kind == "revoked_key":
            yield self.plugin(**self.revoked)
            return
        self.fake.fault = self.faults[kind]
        self.fake.retry_after_s = 2 if kind == "rate_limited" else None
        try:
            yield self.plugin()
        finally:
            self.fake.fault = None
            self.fake.retry_after_s = None

    @contextlib.contextmanager
    def slow_health(self) -> Iterator[PaymentProvider]:
        # Slower than 80% of the timeout (DEGRADED) by the fake's own hold, and half a
        # second inside it, so a loaded machine does not turn slow into timed out.
        self.fake.slow_s = HEALTH_HOLD_S
        self.fake.fault = "slow"
        try:
            yield self.plugin(timeout_s=HEALTH_TIMEOUT_S)
        finally:
            self.fake.fault = None
            self.fake.slow_s = TIMEOUT_S * 2


class PaystackHarness(FakeServerHarness):
    revoked: ClassVar[dict[str, str]] = {"secret_key": "sk_test_" + "0" * 40}
    plugin_class = PaystackProvider

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fake = FakePaystack(slow_s=TIMEOUT_S * 2).start()

    def config(self) -> dict[str, Any]:
        return {
            "secret_key": self.fake.secret_key,
            "public_key": self.fake.public_key,
            "base_url": self.fake.base_url,
            "timeout_s": TIMEOUT_S,
        }

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        token = {"succeed": GOOD_AUTHORIZATION, "decline": DECLINED_AUTHORIZATION}.get(outcome)
        return self.new_request(payment_token=token, amount_minor=amount_minor)

    def charges(self, reference: str) -> int:
        """Accepted charges whose transaction took the money (a declined authorization
        leaves a ``failed`` transaction in Paystack's books, and no money)."""
        transaction = self.fake.transaction(reference)
        if transaction is None or transaction["status"] != "success":
            return 0
        return self.fake.charges_count(reference)

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        return self.fake.webhook(
            "charge.success", self.fake.event_data("charge.success", reference)
        )

    def customer_pays(self, reference: str) -> None:
        self.fake.set_status(reference, "success")

    def dispute_webhook(
        self, reference: str, outcome: DisputeStatus
    ) -> tuple[bytes, dict[str, str]]:
        event = (
            "charge.dispute.create" if outcome is DisputeStatus.OPEN else "charge.dispute.resolve"
        )
        data = self.fake.event_data(event, reference)
        if outcome is not DisputeStatus.OPEN:
            resolution = "declined" if outcome is DisputeStatus.WON else "merchant-accepted"
            data.update(status="resolved", resolution=resolution)
        return self.fake.webhook(event, data)


class StripeHarness(FakeServerHarness):
    revoked: ClassVar[dict[str, str]] = {"secret_key": "sk_test_revoked_" + "0" * 24}
    plugin_class = StripeProvider
    currency = "USD"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fake = FakeStripe(slow_s=TIMEOUT_S * 2).start()

    def config(self) -> dict[str, Any]:
        return {
            "secret_key": self.fake.secret_key,
            "webhook_secret": self.fake.webhook_secret,
            "base_url": self.fake.base_url,
            "timeout_s": TIMEOUT_S,
        }

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        token = {"succeed": "pm_card_visa", "decline": "pm_card_chargeDeclined"}.get(outcome)
        return self.new_request(payment_token=token, amount_minor=amount_minor)

    def charges(self, reference: str) -> int:
        return self.fake.charges_count(reference)

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        intent = self.fake.intent_for(reference)
        return self.fake.webhook("payment_intent.succeeded", intent, at=time.time() - age_s)

    def dispute_webhook(
        self, reference: str, outcome: DisputeStatus
    ) -> tuple[bytes, dict[str, str]]:
        status = {DisputeStatus.OPEN: "needs_response", DisputeStatus.WON: "won"}.get(
            outcome, "lost"
        )
        kind = "created" if outcome is DisputeStatus.OPEN else "closed"
        return self.fake.webhook(f"charge.dispute.{kind}", self.fake.dispute(reference, status))

    def refunds_wait(self, wait: bool) -> None:
        self.fake.refund_status = "pending" if wait else "succeeded"

    def end_refund(self, refund_id: str, *, paid: bool) -> None:
        self.fake.settle_refund(refund_id, "succeeded" if paid else "failed")

    def reverse_refund(self, refund_id: str) -> None:
        self.fake.fail_refund(refund_id)

    def customer_declines(self, reference: str) -> None:
        self.fake.fail_checkout_attempt(reference)

    def customer_pays(self, reference: str) -> None:
        self.fake.complete_checkout(reference)


class FlutterwaveHarness(FakeServerHarness):
    revoked: ClassVar[dict[str, str]] = {"secret_key": "FLWSECK_TEST-revoked-X"}
    plugin_class = FlutterwaveProvider

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fake = FakeFlutterwave(slow_s=TIMEOUT_S * 2).start()

    def config(self) -> dict[str, Any]:
        return {
            "secret_key": self.fake.secret_key,
            "secret_hash": self.fake.secret_hash,
            "base_url": self.fake.base_url,
            "timeout_s": TIMEOUT_S,
        }

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        token = {"succeed": "flw-t1nf-good", "decline": "flw-t1nf-declined"}.get(outcome)
        return self.new_request(payment_token=token, amount_minor=amount_minor)

    def charges(self, reference: str) -> int:
        return self.fake.charges_count(reference)

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        return self.fake.webhook(reference)

    def customer_declines(self, reference: str) -> None:
        self.fake.attempt(reference, "failed", "Declined")

    def refunds_wait(self, wait: bool) -> None:
        self.fake.refunds_settle_later = wait

    def end_refund(self, refund_id: str, *, paid: bool) -> None:
        self.fake.settle_refund(refund_id, "completed" if paid else "failed")

    def customer_pays(self, reference: str) -> None:
        self.fake.complete(reference)


class PayPalHarness(FakeServerHarness):
    revoked: ClassVar[dict[str, str]] = {"client_secret": "E" + "0" * 40}
    stale_s: ClassVar[float] = 5 * 86_400  # past PayPal's 3-day retry window and a day
    plugin_class = PayPalProvider
    currency = "USD"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fake = FakePayPal(slow_s=TIMEOUT_S * 2).start()

    def config(self) -> dict[str, Any]:
        return {
            "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret,
            "webhook_id": self.fake.webhook_id,
            "base_url": self.fake.base_url,
            "timeout_s": TIMEOUT_S,
        }

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        token = {
            "succeed": "pp-vault-good",
            "decline": "pp-vault-declined",
            "pending_capture": "pp-vault-pending",
        }.get(outcome)
        return self.new_request(payment_token=token, amount_minor=amount_minor)

    def charges(self, reference: str) -> int:
        return self.fake.charges_count(reference)

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        capture = self.fake.capture_of(reference)
        return self.fake.webhook("PAYMENT.CAPTURE.COMPLETED", capture, age_s=age_s)

    def customer_pays(self, reference: str) -> None:
        [order] = self.fake.orders_for(reference)
        self.fake.approve(order["id"])  # the payer approves; verify captures it

    def complete_capture(self, reference: str) -> None:
        self.fake.complete_capture(reference)

    def refunds_wait(self, wait: bool) -> None:
        self.fake.refunds_settle_later = wait

    def end_refund(self, refund_id: str, *, paid: bool) -> None:
        self.fake.settle_refund(refund_id, "COMPLETED" if paid else "FAILED")

    def dispute_webhook(
        self, reference: str, outcome: DisputeStatus
    ) -> tuple[bytes, dict[str, str]]:
        if outcome is DisputeStatus.OPEN:
            return self.fake.webhook(
                "CUSTOMER.DISPUTE.CREATED", self.fake.dispute_resource(reference)
            )
        code = "RESOLVED_SELLER_FAVOUR" if outcome is DisputeStatus.WON else "RESOLVED_BUYER_FAVOUR"
        resource = self.fake.dispute_resource(reference, outcome=code)
        return self.fake.webhook("CUSTOMER.DISPUTE.RESOLVED", resource)

    def tamper(self, raw: bytes) -> bytes:
        event = json.loads(raw)
        event["resource"]["amount"]["value"] = "0.01"
        return json.dumps(event).encode()

    @contextlib.contextmanager
    def slow_health(self) -> Iterator[PaymentProvider]:
        """PayPal's health check is a token request: the OAuth endpoint answers slowly."""
        self.fake.token_delay_s = HEALTH_HOLD_S
        try:
            yield self.plugin(timeout_s=HEALTH_TIMEOUT_S)
        finally:
            self.fake.token_delay_s = 0.0


HARNESSES: dict[str, type[Harness]] = {
    "sandbox": SandboxHarness,
    "paystack": PaystackHarness,
    "stripe": StripeHarness,
    "flutterwave": FlutterwaveHarness,
    "paypal": PayPalHarness,
}
