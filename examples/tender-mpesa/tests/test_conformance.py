"""The M-Pesa Express plugin against Tender's contract (``pytest --tender-conformance``),
through its real HTTP client against the fake Daraja (``tests/fake.py``)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tender_mpesa.plugin import MpesaProvider, account_reference

from providers.base import PaymentProvider, PaymentRequest, derive_reference
from tender_kit import ConformanceSuite, Fault, Harness, Outcome
from tender_kit.contract import run
from tender_kit.harness import HEALTH_HOLD_S, HEALTH_TIMEOUT_S, TIMEOUT_S
from tests.fake import FakeDaraja, Prompt

CREDENTIALS = {
    "consumer_key": "Gt5NqCVKqHPZ2ZtBPa1vRMAmZxvoSHKC",
    "consumer_secret": "bC1dsP0EfkEtDqbM",
    "passkey": "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919",
}
SHORTCODE = "174379"  # Daraja's sandbox shortcode
PHONE = "254708374149"  # Daraja's sandbox test number


class MpesaHarness(Harness):
    plugin_class = MpesaProvider
    currency = "KES"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fake = FakeDaraja(
            CREDENTIALS["consumer_key"],
            CREDENTIALS["consumer_secret"],
            SHORTCODE,
            CREDENTIALS["passkey"],
        ).start()
        self.accounts: dict[str, str] = {}  # Tender's reference -> the prompt's account

    def close(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {
            **CREDENTIALS,
            "shortcode": SHORTCODE,
            "callback_url": "https://tender.example.com/webhooks/mpesa",
            "base_url": self.fake.base_url,
            "timeout_s": TIMEOUT_S,
        }

    def new_request(self, **fields: Any) -> PaymentRequest:
        key = uuid.uuid4().hex
        defaults: dict[str, Any] = {
            "reference": derive_reference(key),
            "order_id": f"INV{key[:9].upper()}",
            "metadata": {"phone_number": PHONE},
        }
        request = super().new_request(**(defaults | fields))
        self.accounts[request.reference] = account_reference(request)
        return request

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        # Every prompt waits on the customer (customer_pays, customer_declines).
        return self.new_request(amount_minor=amount_minor)

    def _latest(self, reference: str) -> Prompt:
        prompts = self.fake.prompts_for(self.accounts[reference])
        assert prompts, f"no prompt was sent for {reference}"
        return prompts[-1]

    def customer_pays(self, reference: str) -> None:
        self.fake.answer(self.accounts[reference], "0")

    def customer_declines(self, reference: str) -> None:
        self.fake.answer(self.accounts[reference], "1032")

    def charges(self, reference: str) -> int:
        account = self.accounts.get(reference)
        if account is None:
            return 0
        return sum(p.result == "0" for p in self.fake.prompts_for(account))

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        # What M-Pesa posts for a paid prompt; for one still open, the same claim forged.
        return self.fake.callback(self._latest(reference)), {"content-type": "application/json"}

    def tamper(self, raw: bytes) -> bytes:
        body = json.loads(raw)
        items = body["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
        next(item for item in items if item["Name"] == "Amount")["Value"] = 1
        return json.dumps(body).encode()

    @contextlib.contextmanager
    def fault(self, kind: Fault) -> Iterator[PaymentProvider]:
        fake = self.fake
        if kind == "down":
            yield self.plugin(base_url="http://127.0.0.1:9")  # nothing listens on port 9
            return
        switch: dict[Fault, tuple[str, Any]] = {
            "stall_after_recording": ("hold_after_recording_s", TIMEOUT_S * 2),
            "server_error": ("fault_status", 503),
            "rate_limited": ("fault_rate_limit", True),
            "revoked_key": ("credentials_revoked", True),
        }
        name, value = switch[kind]
        before = getattr(fake, name)
        plugin = self.plugin()
        if kind == "server_error":
            # A token first, so the 503 meets the prompt itself, after it was sent.
            run(plugin._access_token())
        setattr(fake, name, value)
        try:
            yield plugin
        finally:
            setattr(fake, name, before)

    @contextlib.contextmanager
    def slow_health(self) -> Iterator[PaymentProvider]:
        self.fake.fault_hold_s = HEALTH_HOLD_S
        try:
            yield self.plugin(timeout_s=HEALTH_TIMEOUT_S)
        finally:
            self.fake.fault_hold_s = 0.0


class TestMpesa(ConformanceSuite):
    harness_class = MpesaHarness
