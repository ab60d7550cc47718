"""Webhooks an attacker shapes (issue 36): a body nested 10,000 deep, even correctly signed,
is a 400 for every provider (it was a RecursionError, a 500), refused before any parse can
recurse and, for PayPal, before any call to PayPal; certificate addresses are parsed as
an HTTP client would parse them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import pytest

from providers.base import MAX_JSON_DEPTH, load_json
from providers.errors import WebhookPayloadError, WebhookSignatureError
from providers.flutterwave import FlutterwaveProvider
from providers.paypal import PayPalProvider, paypal_cert_url_ok
from providers.paystack import PaystackProvider
from providers.sandbox import SandboxProvider
from providers.stripe import StripeProvider
from tests.fakes.paypal.server import CERT_URL, FakePayPal
from tests.fakes.paystack import sign as paystack_sign

DEEP = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


def paypal(fake: FakePayPal) -> PayPalProvider:
    plugin = PayPalProvider()
    plugin.configure(
        {
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "webhook_id": fake.webhook_id,
            "base_url": fake.base_url,
        }
    )
    return plugin


def transmission(cert_url: str = CERT_URL) -> dict[str, str]:
    """PayPal's transmission headers for a forged delivery (any signature: PayPal's
    verify call would refuse it; these tests are about what happens before and around
    that call)."""
    return {
        "PAYPAL-TRANSMISSION-ID": "t-1",
        "PAYPAL-TRANSMISSION-SIG": "c2ln",
        "PAYPAL-TRANSMISSION-TIME": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
    }


def test_json_deeper_than_the_bound_is_refused_before_parsing() -> None:
    assert load_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(ValueError, match="nested deeper"):
        load_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    # brackets inside strings are text, not nesting
    assert load_json(b'{"note": "' + b"[" * 500 + b'"}') == {"note": "[" * 500}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_signed_deep_body_is_a_payload_error_for_every_hmac_provider() -> None:
    sandbox = SandboxProvider()
    sandbox.configure({"api_key": "sbx-key"})
    with pytest.raises(WebhookPayloadError):
        run(sandbox.parse_webhook(DEEP, {"x-sandbox-signature": sandbox.sign(DEEP)}))

    paystack = PaystackProvider()
    key = "sk_test_" + "1" * 40
    paystack.configure({"secret_key": key, "public_key": "pk_test_x"})
    with pytest.raises(WebhookPayloadError):
        run(paystack.parse_webhook(DEEP, {"x-paystack-signature": paystack_sign(key, DEEP)}))

    stripe = StripeProvider()
    secret = "whsec_" + "2" * 32
    stripe.configure({"secret_key": "sk_test_" + "3" * 24, "webhook_secret": secret})
    stamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + DEEP, hashlib.sha256).hexdigest()
    with pytest.raises(WebhookPayloadError):
        run(stripe.parse_webhook(DEEP, {"Stripe-Signature": f"t={stamp},v1={mac}"}))

    flutterwave = FlutterwaveProvider()
    flutterwave.configure(
        {"secret_key": "FLWSECK_TEST-" + "4" * 32, "secret_hash": "hash-5-0123456789abcdef"}
    )
    with pytest.raises(WebhookPayloadError):
        run(flutterwave.parse_webhook(DEEP, {"verif-hash": "hash-5-0123456789abcdef"}))


def test_paypal_refuses_a_deep_body_without_calling_paypal() -> None:
    with FakePayPal() as fake:
        plugin = paypal(fake)
        headers = transmission(CERT_URL)
        with pytest.raises(WebhookPayloadError):
            run(plugin.parse_webhook(DEEP, headers))
        assert fake.requests == [] and fake.token_requests == 0


@pytest.mark.parametrize(
    "address",
    [
        "https://evil.example\\@www.paypal.com/c",  # a backslash: the host is evil.example
        "https://user@api.paypal.com/cert.pem",  # userinfo has no business here
        "https://api.paypal.com:8443/cert.pem",  # PayPal serves certificates on 443
        "https://api.paypal.com.evil.example/cert.pem",
        "http://api.paypal.com/cert.pem",
        "https://evil.example/api.paypal.com",
        "https://api.paypal.com%2f@evil.example/",
        " https://api.paypal.com/cert.pem",
    ],
)
def test_a_certificate_address_not_plainly_paypals_is_refused(address: str) -> None:
    assert not paypal_cert_url_ok(address)
    with FakePayPal() as fake:
        plugin = paypal(fake)
        headers = transmission(address)
        with pytest.raises(WebhookSignatureError):
            run(plugin.parse_webhook(b"{}", headers))
        assert fake.requests == []


def test_paypals_own_certificate_addresses_pass() -> None:
    assert paypal_cert_url_ok(CERT_URL)
    assert paypal_cert_url_ok("https://api.paypal.com/v1/notifications/certs/CERT-360caa42")
    assert paypal_cert_url_ok("https://api.sandbox.paypal.com/v1/notifications/certs/CERT-1")


def test_forged_paypal_webhooks_beyond_the_bound_are_refused_at_once() -> None:
    """Each forged PayPal-shaped webhook costs a call to PayPal: 80 at once stalled the API
    (issue 36). Past MAX_CONCURRENT_VERIFICATIONS per instance, the rest are refused at
    once as unavailable (503), with no call to PayPal."""
    from providers.errors import ProviderUnavailable
    from providers.paypal import MAX_CONCURRENT_VERIFICATIONS

    with FakePayPal() as fake:
        plugin = paypal(fake)
        fake.verify_delay_s = 0.5
        headers = transmission(CERT_URL)

        async def forge_many() -> list[BaseException | object]:
            calls = [plugin.parse_webhook(b'{"id": "x"}', headers) for _ in range(20)]
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = run(forge_many())
        busy = [o for o in outcomes if isinstance(o, ProviderUnavailable)]
        forged = [o for o in outcomes if isinstance(o, WebhookSignatureError)]
        assert len(busy) == 20 - MAX_CONCURRENT_VERIFICATIONS
        assert len(forged) == MAX_CONCURRENT_VERIFICATIONS
        verifies = [r for r in fake.requests if "verify-webhook-signature" in r[1]]
        assert len(verifies) == MAX_CONCURRENT_VERIFICATIONS


def test_a_verification_past_the_time_budget_is_unavailable_not_a_crash(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PayPal check that outlives the provider time budget was a CallTimeout, a 500
    (issue 36): it is a ProviderUnavailable now, which the route answers 503."""
    from config.settings import reset_settings
    from providers.errors import ProviderUnavailable
    from workers import runtime
    from workers.payments.webhooks import receive_webhook

    monkeypatch.setenv("TENDER_PROVIDER_TIMEOUT_S", "0.3")
    reset_settings()
    runtime.reset()
    try:
        with FakePayPal() as fake:
            runtime.registry().create_instance(
                "paypal",
                {
                    "client_id": fake.client_id,
                    "client_secret": fake.client_secret,
                    "webhook_id": fake.webhook_id,
                    "base_url": fake.base_url,
                },
                is_active=True,
            )
            fake.verify_delay_s = 1.0
            headers = transmission(CERT_URL)
            with pytest.raises(ProviderUnavailable, match="did not verify"):
                receive_webhook("paypal", b'{"id": "x"}', headers, publisher=object())  # type: ignore[arg-type]
    finally:
        runtime.reset()
        reset_settings()
