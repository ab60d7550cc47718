"""Stripe end to end: the CLI adds a Stripe instance and pays through it, the real worker
charges through the real ``stripe`` SDK against the fake Stripe, a signed webhook into the
HTTP app settles the checkout, and a Paystack -> Stripe hot swap mid-run loses and
duplicates nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from surfaces.cli.main import app as cli
from tests.fakes.paystack import FakePaystack
from tests.fakes.stripe.server import FakeStripe
from tests.integration.conftest import wait_for
from tests.integration.test_paystack_e2e import paystack_instance, wait_status
from workers import runtime
from workers.payments.client import get_payment, request_payment

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


def stripe_config(fake: FakeStripe) -> dict[str, Any]:
    return {
        "secret_key": fake.secret_key,
        "webhook_secret": fake.webhook_secret,
        "base_url": fake.base_url,
        "timeout_s": 3,
    }


def test_cli_adds_stripe_pays_through_the_sdk_and_a_webhook_settles_it(
    worker: Any, tenant: str, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_SECRET", fake_stripe.secret_key)
    runner = CliRunner()
    added = runner.invoke(
        cli,
        [
            "plugins", "add", "stripe", "--name", "Stripe US", "--tenant", tenant, "--activate",
            "-c", "secret_key=env:STRIPE_SECRET", "-c", f"webhook_secret={fake_stripe.webhook_secret}",
            "-c", f"base_url={fake_stripe.base_url}", "-c", "timeout_s=3",
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert fake_stripe.webhook_secret not in added.output

    order_id = f"ord-{uuid.uuid4().hex[:6]}"
    paid = runner.invoke(
        cli,
        [
            "pay",
            order_id,
            "25.00",
            "USD",
            "ada@example.com",
            "--tenant",
            tenant,
            "--wait",
            "15",
        ],
    )
    assert paid.exit_code == 0, paid.output
    payment_id = next(w for w in paid.output.split() if w.count("-") == 4)
    view = wait_status(payment_id, "pending")
    assert view.authorization_url and view.authorization_url.startswith(
        "https://checkout.stripe.com/"
    )
    assert fake_stripe.sessions_count(view.provider_reference) == 1
    sent = next(
        form for method, path, form in fake_stripe.requests if path == "/v1/checkout/sessions"
    )
    assert sent["line_items"][0]["price_data"] == {
        "currency": "usd", "unit_amount": "2500", "product_data": {"name": f"Order {order_id}"},
    }  # fmt: skip

    session = fake_stripe.complete_checkout(view.provider_reference)
    raw, headers = fake_stripe.webhook("checkout.session.completed", session)
    from surfaces.http.app import create_app

    with TestClient(create_app()) as api:
        answer = api.post("/webhooks/stripe", content=raw, headers=headers)
        assert answer.status_code == 200, answer.text
        assert (
            api.post("/webhooks/stripe", content=raw, headers=headers).json()["result"]
            == "duplicate"
        )
        forged = {**headers, "Stripe-Signature": headers["Stripe-Signature"][:-4] + "0000"}
        assert api.post("/webhooks/stripe", content=raw, headers=forged).status_code == 401
    assert wait_status(payment_id, "succeeded").status.value == "succeeded"


def test_saved_card_through_the_worker_charges_once(
    worker: Any, tenant: str, fake_stripe: FakeStripe
) -> None:
    runtime.registry().create_instance(
        "stripe", stripe_config(fake_stripe), tenant_id=tenant, is_active=True
    )
    receipt = request_payment(
        f"ord-{uuid.uuid4().hex[:6]}", Decimal("12.50"), "USD", "ada@example.com",
        tenant_id=tenant, payment_token="pm_card_visa",
    )  # fmt: skip
    view = wait_status(receipt.payment_id, "succeeded")
    assert fake_stripe.charges_count(view.provider_reference) == 1
    declined = request_payment(
        f"ord-{uuid.uuid4().hex[:6]}", Decimal("12.50"), "USD", "ada@example.com",
        tenant_id=tenant, payment_token="pm_card_chargeDeclinedInsufficientFunds",
    )  # fmt: skip
    failed = wait_status(declined.payment_id, "failed")
    assert failed.error_code == "insufficient_funds"


def test_a_paystack_to_stripe_hot_swap_mid_run_loses_and_duplicates_nothing(
    worker: Any, tenant: str, fake_stripe: FakeStripe
) -> None:
    with FakePaystack() as fake_paystack:
        paystack = paystack_instance(fake_paystack, tenant, name="paystack-ng")
        stripe_view = runtime.registry().create_instance(
            "stripe", stripe_config(fake_stripe), tenant_id=tenant, is_active=False
        )
        ids: list[uuid.UUID] = []

        def submit() -> None:
            for n in range(30):
                receipt = request_payment(
                    f"swap-{n}-{uuid.uuid4().hex[:4]}", Decimal("100.00"), "NGN",
                    "ada@example.com", tenant_id=tenant,
                )  # fmt: skip
                ids.append(receipt.payment_id)
                time.sleep(0.05)

        billing = threading.Thread(target=submit)
        billing.start()
        wait_for(lambda: len(ids) >= 10)
        runtime.registry().activate(stripe_view.id, exclusive=True)  # the swap, mid-run
        billing.join()
        views = [wait_status(pid, "pending") for pid in ids]
        at_paystack = {
            v.provider_reference for v in views if fake_paystack.charges_count(v.provider_reference)
        }
        at_stripe = {
            v.provider_reference for v in views if fake_stripe.sessions_count(v.provider_reference)
        }
        assert len(views) == 30 and at_paystack | at_stripe == {v.provider_reference for v in views}
        assert not at_paystack & at_stripe  # no payment reached both providers
        assert at_paystack and at_stripe  # the swap happened mid-run
        assert all(fake_stripe.sessions_count(r) == 1 for r in at_stripe)
        assert {get_payment(v.id).provider for v in views} == {"paystack", "stripe"}
        assert paystack.id != stripe_view.id
