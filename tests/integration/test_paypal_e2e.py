"""PayPal end to end: the CLI adds a PayPal instance, the real worker charges through
PayPal's official SDK against the fake PayPal, the payer's approval arrives as a webhook the
HTTP app has PayPal verify and then captures, saved wallets are charged once each on one
OAuth token, and a Stripe -> PayPal hot swap mid-run loses and duplicates nothing."""

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
from tests.fakes.paypal.server import FakePayPal
from tests.fakes.stripe.server import FakeStripe
from tests.integration.conftest import wait_for
from tests.integration.test_paystack_e2e import wait_status
from tests.integration.test_stripe_e2e import stripe_config
from workers import runtime
from workers.payments.client import get_payment, request_payment

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_paypal() -> Iterator[FakePayPal]:
    with FakePayPal() as fake:
        yield fake


def paypal_config(fake: FakePayPal) -> dict[str, Any]:
    return {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "webhook_id": fake.webhook_id,
        "base_url": fake.base_url,
        "timeout_s": 3,
    }


def test_cli_adds_paypal_and_an_approval_webhook_completes_the_payment(
    worker: Any, tenant: str, fake_paypal: FakePayPal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYPAL_SECRET", fake_paypal.client_secret)
    runner = CliRunner()
    added = runner.invoke(
        cli,
        [
            "plugins", "add", "paypal", "--name", "PayPal US", "--tenant", tenant, "--activate",
            "-c", f"client_id={fake_paypal.client_id}", "-c", "client_secret=env:PAYPAL_SECRET",
            "-c", f"webhook_id={fake_paypal.webhook_id}", "-c", f"base_url={fake_paypal.base_url}",
            "-c", "timeout_s=3",
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert fake_paypal.client_secret not in added.output

    paid = runner.invoke(
        cli,
        ["pay", f"ord-{uuid.uuid4().hex[:6]}", "25.00", "USD", "ada@example.com",
         "--tenant", tenant, "--wait", "15"],
    )  # fmt: skip
    assert paid.exit_code == 0, paid.output
    payment_id = next(w for w in paid.output.split() if w.count("-") == 4)
    view = wait_status(payment_id, "pending")
    [order] = fake_paypal.orders_for(view.provider_reference)
    assert (
        view.authorization_url == f"https://www.sandbox.paypal.com/checkoutnow?token={order['id']}"
    )
    assert order["purchase_units"][0]["amount"] == {"currency_code": "USD", "value": "25.00"}
    assert fake_paypal.charges_count(view.provider_reference) == 0

    raw, headers = fake_paypal.webhook("CHECKOUT.ORDER.APPROVED", fake_paypal.approve(order["id"]))
    from surfaces.http.app import create_app

    with TestClient(create_app()) as api:
        answer = api.post("/webhooks/paypal", content=raw, headers=headers)
        assert answer.status_code == 200, answer.text
        again = api.post("/webhooks/paypal", content=raw, headers=headers)
        assert again.json()["result"] == "duplicate"
        forged = {**headers, "PAYPAL-TRANSMISSION-SIG": "A" * 88}
        assert api.post("/webhooks/paypal", content=raw, headers=forged).status_code == 401
        fake_paypal.fault = "429"  # PayPal cannot vouch for the event now: try again later
        unverified = api.post("/webhooks/paypal", content=raw, headers=headers)
        assert unverified.status_code == 503, unverified.text
        fake_paypal.fault = None
    assert wait_status(payment_id, "succeeded").status.value == "succeeded"
    assert fake_paypal.charges_count(view.provider_reference) == 1


def test_saved_wallets_through_the_worker_charge_once_each_on_one_token(
    worker: Any, tenant: str, fake_paypal: FakePayPal
) -> None:
    runtime.registry().create_instance(
        "paypal", paypal_config(fake_paypal), tenant_id=tenant, is_active=True
    )
    receipts = [
        request_payment(
            f"ord-{n}-{uuid.uuid4().hex[:6]}", Decimal("12.50"), "USD", "ada@example.com",
            tenant_id=tenant, payment_token="pp-vault-good",
        )
        for n in range(10)
    ]  # fmt: skip
    views = [wait_status(r.payment_id, "succeeded") for r in receipts]
    assert all(fake_paypal.charges_count(v.provider_reference) == 1 for v in views)
    assert fake_paypal.token_requests == 1  # ten payments, one OAuth token
    declined = request_payment(
        f"ord-{uuid.uuid4().hex[:6]}", Decimal("12.50"), "USD", "ada@example.com",
        tenant_id=tenant, payment_token="pp-vault-nofunds",
    )  # fmt: skip
    assert wait_status(declined.payment_id, "failed").error_code == "INSTRUMENT_DECLINED"


def test_a_stripe_to_paypal_hot_swap_mid_run_loses_and_duplicates_nothing(
    worker: Any, tenant: str, fake_paypal: FakePayPal
) -> None:
    with FakeStripe() as fake_stripe:
        runtime.registry().create_instance(
            "stripe", stripe_config(fake_stripe), tenant_id=tenant, is_active=True
        )
        paypal = runtime.registry().create_instance(
            "paypal", paypal_config(fake_paypal), tenant_id=tenant, is_active=False
        )
        ids: list[uuid.UUID] = []

        def submit() -> None:
            for n in range(30):
                receipt = request_payment(
                    f"swap-{n}-{uuid.uuid4().hex[:4]}", Decimal("40.00"), "USD",
                    "ada@example.com", tenant_id=tenant,
                )  # fmt: skip
                ids.append(receipt.payment_id)
                time.sleep(0.05)

        billing = threading.Thread(target=submit)
        billing.start()
        wait_for(lambda: len(ids) >= 10)
        runtime.registry().activate(paypal.id, exclusive=True)  # the swap, mid-run
        billing.join()
        views = [wait_status(pid, "pending") for pid in ids]
        references = {v.provider_reference for v in views}
        at_stripe = {r for r in references if fake_stripe.sessions_count(r)}
        at_paypal = {r for r in references if fake_paypal.orders_for(r)}
        assert len(views) == 30 and at_stripe | at_paypal == references
        assert not at_stripe & at_paypal  # no payment reached both providers
        assert at_stripe and at_paypal  # the swap happened mid-run
        assert all(len(fake_paypal.orders_for(r)) == 1 for r in at_paypal)
        assert {get_payment(v.id).provider for v in views} == {"stripe", "paypal"}
