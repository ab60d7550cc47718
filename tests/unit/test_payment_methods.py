"""Saved payment methods (issue 35): imported, charged by id only through the instance
that issued them (a 50/50 split never sends one to the other provider), refused once
revoked or unavailable, within their tenant, and their token never shown."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from config.settings import reset_settings
from registry.db import get_database
from registry.tokens import create_token
from tests.unit.test_scopes import BOOTSTRAP
from workers import runtime
from workers.ledger.outbox import OutboxEvent
from workers.ledger.records import Payment, PaymentAttempt
from workers.payments.client import InvalidPaymentRequest, get_payment, request_payment
from workers.payments.methods import (
    import_payment_method,
    list_payment_methods,
    revoke_payment_method,
)
from workers.tasks import processor

CANARY = f"AUTH_canary_{uuid.uuid4().hex}"


@pytest.fixture
def split(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """Two sandbox accounts of tenant t-a sharing its NGN traffic 50/50."""
    from workers.core.app import reconfigure

    monkeypatch.setenv("TENDER_API_TOKEN", BOOTSTRAP)
    reset_settings()
    runtime.reset()
    reconfigure()
    book = str(tmp_path / "book.db")
    registry = runtime.registry()
    x = registry.create_instance(
        "sandbox", {"charge_book": book}, tenant_id="t-a", display_name="X", is_active=True
    )
    y = registry.create_instance(
        "sandbox", {"charge_book": book}, tenant_id="t-a", display_name="Y", is_active=True
    )
    yield x, y
    runtime.reset()
    reset_settings()


class Quiet:
    def publish(self, rows: object) -> None:
        pass


@pytest.fixture
def fresh(sqlite_url: str) -> Iterator[None]:
    """A registry and broker of this test's own, for one provider account at a time."""
    from workers.core.app import reconfigure

    reset_settings()
    runtime.reset()
    reconfigure()
    yield
    runtime.reset()


def paystack_account(fake: Any, tenant: str) -> Any:
    return runtime.registry().create_instance(
        "paystack",
        {"secret_key": fake.secret_key, "public_key": fake.public_key,
         "base_url": fake.base_url, "callback_url": "https://shop.example/paid"},
        tenant_id=tenant, is_active=True,
    )  # fmt: skip


def stripe_account(fake: Any, tenant: str) -> Any:
    return runtime.registry().create_instance(
        "stripe",
        {"secret_key": fake.secret_key, "webhook_secret": fake.webhook_secret,
         "base_url": fake.base_url},
        tenant_id=tenant, is_active=True,
    )  # fmt: skip


def charge(method_id: str, n: int, tenant: str = "t-a") -> uuid.UUID:
    receipt = request_payment(
        f"renewal-{n}", "25.00", "NGN", "ada@example.com", tenant_id=tenant,
        idempotency_key=f"renewal-{uuid.uuid4().hex}", payment_method_id=method_id,
    )  # fmt: skip
    processor().process(receipt.payment_id)
    return receipt.payment_id


def test_a_saved_method_is_charged_only_by_its_issuer_under_a_split(split: tuple) -> None:
    x, y = split
    method = import_payment_method(x.id, CANARY, "cust-42", brand="visa", last4="4242")
    assert method.tenant_id == "t-a" and method.instance_id == x.id
    paid = [charge(method.id, n) for n in range(40)]
    with get_database().sessions() as session:
        went = set(
            session.execute(select(Payment.instance_id).where(Payment.id.in_(paid))).scalars()
        )
        tried = set(
            session.execute(
                select(PaymentAttempt.instance_id).where(PaymentAttempt.payment_id.in_(paid))
            ).scalars()
        )
    assert went == {x.id} and tried == {x.id}
    assert {get_payment(p).status.value for p in paid} == {"succeeded"}
    # without a method the same tenant's payments do split: the pin is what kept them on X
    unpinned = []
    for n in range(40):
        receipt = request_payment(f"o-{n}", "25.00", "NGN", "ada@example.com", tenant_id="t-a")
        processor().process(receipt.payment_id)
        unpinned.append(get_payment(receipt.payment_id).instance_id)
    assert set(unpinned) == {x.id, y.id}


def test_an_unavailable_issuer_fails_the_payment_and_charges_no_one_else(split: tuple) -> None:
    x, y = split
    method = import_payment_method(x.id, CANARY, "cust-43")
    runtime.registry().deactivate(x.id)
    runtime.registry().refresh(force=True)  # workers follow within the hot-swap bound
    payment = get_payment(charge(method.id, 1))
    assert payment.status.value == "failed" and payment.error_code == "payment_method_unavailable"
    assert payment.attempts == [] or all(a.instance_id != y.id for a in payment.attempts)


def test_a_revoked_or_foreign_method_is_refused_before_anything_is_written(split: tuple) -> None:
    x, _ = split
    method = import_payment_method(x.id, CANARY, "cust-44")
    with pytest.raises(InvalidPaymentRequest, match="payment_method_id: no payment method"):
        charge(method.id, 1, tenant="t-b")  # another tenant's method does not exist for it
    revoke_payment_method(method.id)
    with pytest.raises(InvalidPaymentRequest, match="is revoked"):
        charge(method.id, 2)
    with pytest.raises(InvalidPaymentRequest, match="token"):
        import_payment_method(x.id, "  ", "cust-44")
    assert [m.status for m in list_payment_methods(customer_ref="cust-44")] == ["revoked"]


def test_methods_over_rest_stay_in_their_tenant_and_never_show_the_token(split: tuple) -> None:
    from surfaces.http.app import create_app

    x, _ = split
    other = runtime.registry().create_instance("sandbox", {}, tenant_id="t-b", is_active=True)
    _, a_token = create_token(get_database(), "billing-a", ["pay"], tenant_id="t-a")
    _, b_token = create_token(get_database(), "billing-b", ["pay"], tenant_id="t-b")
    with TestClient(create_app()) as client:
        made = client.post(
            "/payment-methods",
            json={"instance_id": str(x.id), "token": CANARY, "customer_ref": "cust-9",
                  "last4": "4242", "wallet_email": "ada.lovelace@example.com"},
            headers={"Authorization": f"Bearer {a_token}"},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        body = made.json()
        assert CANARY not in made.text and body["wallet_email"] == "a***@example.com"
        # B cannot import onto A's instance, list A's methods or revoke one
        onto_a = client.post(
            "/payment-methods",
            json={"instance_id": str(x.id), "token": "t", "customer_ref": "c"},
            headers={"Authorization": f"Bearer {b_token}"},
        )
        assert onto_a.status_code == 404
        listed = client.get("/payment-methods", headers={"Authorization": f"Bearer {b_token}"})
        assert listed.status_code == 200 and listed.json() == []
        gone = client.delete(
            f"/payment-methods/{body['id']}", headers={"Authorization": f"Bearer {b_token}"}
        )
        assert gone.status_code == 404
        paid = client.post(
            "/payments",
            json={"order_id": "o-9", "amount": "9.00", "currency": "NGN",
                  "customer_email": "ada@example.com", "payment_method_id": body["id"]},
            headers={"Authorization": f"Bearer {a_token}"},
        )  # fmt: skip
        assert paid.status_code == 201, paid.text
        processor().process(uuid.UUID(paid.json()["payment_id"]))
        shown = client.get(
            f"/payments/{paid.json()['payment_id']}", headers={"Authorization": f"Bearer {a_token}"}
        )
        assert shown.json()["status"] == "succeeded" and CANARY not in shown.text
    assert other.tenant_id == "t-b"
    with get_database().sessions() as session:
        payloads = session.execute(select(OutboxEvent.payload)).scalars().all()
        stored = session.execute(select(Payment.payment_token)).scalars().all()
    assert CANARY not in json.dumps(payloads)
    assert all(token is None or CANARY not in token for token in stored)  # sealed at rest


def test_the_cli_imports_lists_charges_and_revokes_a_method(split: tuple) -> None:
    """The token is read from stdin, never an argument; the list shows it masked."""
    from typer.testing import CliRunner

    from surfaces.cli.main import app

    x, _ = split
    runner = CliRunner()
    made = runner.invoke(
        app, ["methods", "import", str(x.id), "cust-cli", "--last4", "1111"], input=CANARY + "\n"
    )
    assert made.exit_code == 0, made.output
    method_id = made.output.split("payment method ")[1].split()[0]
    listed = runner.invoke(app, ["methods", "list", "--customer-ref", "cust-cli", "--json"])
    [shown] = json.loads(listed.output)
    assert shown["id"] == method_id and shown["last4"] == "1111" and CANARY not in listed.output
    table = runner.invoke(app, ["methods", "list", "--customer-ref", "cust-cli"])
    assert table.exit_code == 0 and CANARY not in table.output
    paid = runner.invoke(
        app, ["pay", "o-cli", "3.00", "NGN", "ada@example.com", "--tenant", "t-a",
              "--payment-method-id", method_id],
    )  # fmt: skip
    assert paid.exit_code == 0, paid.output
    assert runner.invoke(app, ["methods", "revoke", method_id]).exit_code == 0
    again = runner.invoke(app, ["methods", "revoke", "pm_nope"])
    assert again.exit_code != 0 and "no payment method" in again.output


def test_a_paystack_checkout_saves_the_card_the_customer_agreed_to_save(
    fresh: None,
) -> None:
    """save_for_customer on a checkout: Paystack's charge.success carries the card's
    reusable authorization (recurring charges docs); the ledger saves it for billing's
    customer, bound to the instance that took the payment, publishes payment_method.saved
    (never the token), and the saved method is then charged by id through Paystack's
    charge_authorization."""
    from tests.fakes.paystack.server import FakePaystack
    from workers.payments.webhooks import receive_webhook

    with FakePaystack() as fake:
        instance = paystack_account(fake, "t-p")
        receipt = request_payment(
            "sub-1", "50.00", "NGN", "ada@example.com", tenant_id="t-p",
            save_for_customer="cust-77",
        )  # fmt: skip
        processor().process(receipt.payment_id)
        reference = get_payment(receipt.payment_id).provider_reference
        assert get_payment(receipt.payment_id).status.value == "pending"
        fake.set_status(reference, "success")  # the customer pays on Paystack's page
        raw, headers = fake.webhook("charge.success", fake.event_data("charge.success", reference))

        reply = receive_webhook("paystack", raw, headers, publisher=Quiet())  # type: ignore[arg-type]
        assert reply.result.value == "applied"
        [saved] = list_payment_methods(customer_ref="cust-77")
        assert saved.instance_id == instance.id and saved.tenant_id == "t-p"
        assert saved.last4 == "4081" and saved.exp_year == 2030 and saved.provider == "paystack"
        with get_database().sessions() as session:
            events = (
                session.execute(
                    select(OutboxEvent.payload).where(
                        OutboxEvent.event_type == "payment_method.saved"
                    )
                )
                .scalars()
                .all()
            )
        assert [e["payment_method_id"] for e in events] == [saved.id]
        assert "AUTH_" not in json.dumps(events)

        renewal = charge(saved.id, 2, tenant="t-p")
        view = get_payment(renewal)
        assert view.status.value == "succeeded" and view.instance_id == instance.id
        assert view.payment_method_id == saved.id


def test_a_stripe_checkout_saves_the_card_and_its_customer_once(
    fresh: None,
) -> None:
    """Checkout with setup_future_usage=off_session and a Customer: the succeeded intent
    names the PaymentMethod and its Customer. Stripe sends the session's event and the
    intent's; whichever comes, one method is saved (the intent's names it), and it is
    charged later with its Customer, off-session."""
    from tests.fakes.stripe.server import FakeStripe
    from workers.payments.webhooks import receive_webhook

    with FakeStripe() as fake:
        instance = stripe_account(fake, "t-s")
        receipt = request_payment(
            "sub-s", "20.00", "USD", "ada@example.com", tenant_id="t-s",
            save_for_customer="cust-s",
        )  # fmt: skip
        processor().process(receipt.payment_id)
        reference = get_payment(receipt.payment_id).provider_reference
        created = [f for m, p, f in fake.requests if p == "/v1/checkout/sessions"][-1]
        assert created["customer_creation"] == "always"
        assert created["payment_intent_data"]["setup_future_usage"] == "off_session"
        session = fake.complete_checkout(reference)
        for kind, obj in (
            ("checkout.session.completed", session),
            ("payment_intent.succeeded", fake.intent_for(reference)),
            ("payment_intent.succeeded", fake.intent_for(reference)),  # a second delivery
        ):
            raw, headers = fake.webhook(kind, obj)
            receive_webhook("stripe", raw, headers, publisher=Quiet())  # type: ignore[arg-type]
        [saved] = list_payment_methods(customer_ref="cust-s")
        intent = fake.intent_for(reference)
        assert saved.provider_customer_id == intent["customer"] and saved.provider == "stripe"
        assert saved.instance_id == instance.id

        renewal = get_payment(charge(saved.id, 3, tenant="t-s"))
        assert renewal.status.value == "succeeded"
        charged = [f for m, p, f in fake.requests if p == "/v1/payment_intents"][-1]
        assert charged["customer"] == intent["customer"]
        assert charged["payment_method"] == intent["payment_method"]
        assert charged["off_session"] == "true"


def test_cards_about_to_expire_are_announced_once_and_expired_ones_stop(split: tuple) -> None:
    """payment_method.expiring a configurable number of days ahead (dunning starts
    there), once; past its month the method is expired, announced, and refused."""
    from datetime import UTC, datetime

    from workers.payments.methods import expiry_sweep

    x, _ = split
    soon = import_payment_method(x.id, "AUTH_soon", "cust-e", exp_month=12, exp_year=2026)
    later = import_payment_method(x.id, "AUTH_later", "cust-e", exp_month=6, exp_year=2027)
    gone = import_payment_method(x.id, "AUTH_gone", "cust-e", exp_month=11, exp_year=2026)
    now = datetime(2026, 12, 6, tzinfo=UTC)
    first = expiry_sweep(get_database(), 30, now=now)
    again = expiry_sweep(get_database(), 30, now=now)
    assert len(first) == 2 and again == []
    with get_database().sessions() as session:
        kinds = {
            p["payment_method_id"]: t
            for t, p in session.execute(
                select(OutboxEvent.event_type, OutboxEvent.payload).where(OutboxEvent.id.in_(first))
            ).all()
        }
    assert kinds == {soon.id: "payment_method.expiring", gone.id: "payment_method.expired"}
    statuses = {m.id: m.status for m in list_payment_methods(customer_ref="cust-e")}
    assert statuses == {soon.id: "active", later.id: "active", gone.id: "expired"}
    with pytest.raises(InvalidPaymentRequest, match="is expired"):
        charge(gone.id, 5)


def test_a_saved_stripe_card_the_bank_wants_authenticated_waits_on_the_customer(
    fresh: None,
) -> None:
    """Off-session, Stripe answers authentication_required (a 402 with the PaymentIntent):
    not a decline but a pending payment, with the client_secret the customer confirms it
    with on-session, announced as payment.action_required."""
    from tests.fakes.stripe.server import FakeStripe

    with FakeStripe() as fake:
        instance = stripe_account(fake, "t-s")
        method = import_payment_method(
            instance.id, "pm_card_authenticationRequired", "cust-3ds",
            provider_customer_id="cus_3ds",
        )  # fmt: skip
        view = get_payment(charge(method.id, 7, tenant="t-s"))
        assert view.status.value == "pending" and view.error_code is None
        action = view.next_action
        assert action is not None and action["type"] == "authentication_required"
        assert str(action["client_secret"]).startswith(view.provider_transaction_id or "pi_")
        with get_database().sessions() as session:
            kinds = (
                session.execute(
                    select(OutboxEvent.event_type).where(
                        OutboxEvent.payload["payment_id"].as_string() == str(view.id)
                    )
                )
                .scalars()
                .all()
            )
        assert kinds == ["payment.action_required"]


def test_the_console_lists_a_customers_methods_masked_and_revokes_one(split: tuple) -> None:
    from surfaces.http.app import create_app

    x, _ = split
    method = import_payment_method(
        x.id, CANARY, "cust-console", brand="visa", last4="4242", exp_month=9, exp_year=2029
    )
    with TestClient(create_app()) as client:
        auth = {"Authorization": f"Bearer {BOOTSTRAP}"}
        shown = client.get("/admin/methods?customer=cust-console", headers=auth)
        assert shown.status_code == 200
        assert method.id in shown.text and "•••• 4242" in shown.text and "09/2029" in shown.text
        assert CANARY not in shown.text
        client.cookies.set("tender_csrf", "e" * 40, path="/admin")
        revoked = client.post(
            f"/admin/methods/{method.id}/revoke",
            data={"csrf": "e" * 40},
            headers={**auth, "origin": "http://testserver"},
            follow_redirects=False,
        )
        assert revoked.status_code == 303
    assert [m.status for m in list_payment_methods(customer_ref="cust-console")] == ["revoked"]


def test_a_method_the_provider_no_longer_has_is_revoked_and_announced(
    fresh: None,
) -> None:
    """Paystack declines a charge with invalid_authorization_code ("does not exist or has
    been deactivated"): the payment fails, and the method is revoked, with
    payment_method.revoked, so billing stops retrying a card that is gone."""
    from tests.fakes.paystack.server import FakePaystack

    with FakePaystack() as fake:
        instance = paystack_account(fake, "t-p")
        method = import_payment_method(instance.id, "AUTH_deactivated01", "cust-gone")
        view = get_payment(charge(method.id, 8, tenant="t-p"))
        assert view.status.value == "failed" and view.error_code == "invalid_authorization_code"
        [gone] = list_payment_methods(customer_ref="cust-gone")
        assert gone.status == "revoked"
        with get_database().sessions() as session:
            kinds = (
                session.execute(
                    select(OutboxEvent.event_type).where(
                        OutboxEvent.payload["payment_method_id"].as_string() == method.id
                    )
                )
                .scalars()
                .all()
            )
        assert kinds == ["payment_method.revoked"]


def test_a_payment_waits_for_its_unavailable_issuer_within_a_bound(
    split: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issuer is switched off when the payment comes: the task waits (unclaimed,
    nothing charged), the issuer comes back, the payment goes to it; past the bound the
    payment fails payment_method_unavailable, charged nowhere."""
    from workers.payments.processor import Busy, RouteHint

    x, _ = split
    method = import_payment_method(x.id, CANARY, "cust-wait")
    registry = runtime.registry()
    registry.deactivate(x.id)
    registry.refresh(force=True)
    receipt = request_payment(
        "o-wait", "25.00", "NGN", "ada@example.com", tenant_id="t-a",
        idempotency_key="k-wait", payment_method_id=method.id,
    )  # fmt: skip
    hint = RouteHint("t-a", "NGN", "k-wait", x.id)
    waited = processor().process(receipt.payment_id, hint)
    assert isinstance(waited, Busy) and 0 < waited.retry_in_s <= 30
    assert get_payment(receipt.payment_id).status.value == "requested"  # not claimed

    registry.activate(x.id)
    registry.refresh(force=True)
    processor().process(receipt.payment_id, hint)
    paid = get_payment(receipt.payment_id)
    assert paid.status.value == "succeeded" and paid.instance_id == x.id

    registry.deactivate(x.id)
    registry.refresh(force=True)
    monkeypatch.setenv("TENDER_SAVED_METHOD_WAIT_S", "0")
    reset_settings()
    late = request_payment(
        "o-late", "25.00", "NGN", "ada@example.com", tenant_id="t-a",
        idempotency_key="k-late", payment_method_id=method.id,
    )  # fmt: skip
    processor().process(late.payment_id, RouteHint("t-a", "NGN", "k-late", x.id))
    failed = get_payment(late.payment_id)
    assert failed.status.value == "failed" and failed.error_code == "payment_method_unavailable"


def test_an_instance_of_the_same_account_may_charge_a_method_and_nothing_logs_the_token(
    split: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    """Two instances declared as one provider account (account_id) share saved methods:
    with the issuer off, its sibling charges the method; an instance of another account
    never does. The token shows in no log line; the method shows when it was last used."""
    import logging

    x, y = split
    registry = runtime.registry()
    registry.update_config(x.id, {"account_id": "acct-1"})
    sibling = registry.create_instance(
        "sandbox", {"account_id": "acct-1"}, tenant_id="t-a", display_name="X2", priority=200,
        is_active=True,
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)
    method = import_payment_method(x.id, CANARY, "cust-acct")
    registry.deactivate(x.id)
    registry.refresh(force=True)
    paid = get_payment(charge(method.id, 9))
    assert paid.status.value == "succeeded" and paid.instance_id == sibling.id
    assert paid.instance_id != y.id  # the 50/50 partner of another account never
    [shown] = list_payment_methods(customer_ref="cust-acct")
    assert shown.last_used_at is not None
    assert CANARY not in caplog.text
