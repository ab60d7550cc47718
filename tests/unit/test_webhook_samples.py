"""The fakes send what the providers publish: every field of a provider's own webhook
sample (tests/fixtures/webhooks/<provider>/) is in what its fake sends, and the plugin
reads the sample itself as it reads the fake's event."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from providers.base import OutcomeStatus, PaymentRequest, derive_reference
from providers.paystack import PaystackProvider
from tests.fakes.paystack import sign
from tests.fakes.paystack.server import GOOD_AUTHORIZATION, FakePaystack

SAMPLES = Path(__file__).parents[1] / "fixtures" / "webhooks"


def sample(provider: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SAMPLES / provider / f"{name}.json").read_text())
    return loaded


def test_paystacks_charge_success_sample_is_what_the_fake_sends_and_the_plugin_reads() -> None:
    published = sample("paystack", "charge.success")
    with FakePaystack() as fake:
        plugin = PaystackProvider()
        plugin.configure(
            {"secret_key": fake.secret_key, "public_key": "pk_test_x", "base_url": fake.base_url}
        )
        request = PaymentRequest(
            payment_id=uuid.uuid4(),
            reference=derive_reference(str(uuid.uuid4())),
            order_id="o-1",
            amount_minor=10_000,
            currency="NGN",
            customer_email="ada@example.com",
            payment_token=GOOD_AUTHORIZATION,
        )
        asyncio.run(plugin.process_payment(request))
        sent = fake.event_data("charge.success", request.reference)
        assert set(published["data"]) <= set(sent)
        for nested in ("authorization", "customer"):
            assert set(published["data"][nested]) <= set(sent[nested])

        # Paystack's own bytes, signed with this instance's key, read as a success
        raw = json.dumps(published).encode()
        event = asyncio.run(
            plugin.parse_webhook(raw, {"x-paystack-signature": sign(fake.secret_key, raw)})
        )
    assert event.status is OutcomeStatus.SUCCEEDED and event.reference == "qTPrJoy9Bx"
    assert event.amount_minor == 10_000 and event.currency == "NGN"
