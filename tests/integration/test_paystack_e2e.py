"""Paystack end to end: billing client -> Redis -> the real Celery worker -> the real
pypaystack2 client -> the fake Paystack, and back through signed webhooks into the HTTP
app, with the ledger on PostgreSQL and events on ``tender.events``."""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from config.settings import reset_settings
from providers.base import derive_reference
from registry.db import get_database
from registry.instances import InstanceView
from tests.fakes.paystack import DECLINED_AUTHORIZATION, GOOD_AUTHORIZATION, FakePaystack
from tests.integration.conftest import EventTap, finished_tasks, wait_for
from workers import runtime
from workers.ledger.outbox import OutboxEvent
from workers.ledger.records import WebhookReceipt
from workers.payments.client import PaymentReceipt, PaymentView, get_payment, request_payment
from workers.tasks import process_payment_task, reconcile_task

# --- helpers shared by the Paystack integration tests ---------------------------------


@pytest.fixture
def fake_paystack() -> Iterator[FakePaystack]:
    """A fake Paystack whose transaction and refund ids do not repeat across tests.

    Paystack's ids are global, so webhook receipts (keyed by event id) and refunds (by
    the provider's refund id) are unique in the ledger; every fake counts from the same
    first id, and these tests share one ledger.
    """
    with FakePaystack() as fake:
        fake._ids = itertools.count(random.randrange(10**9, 10**12, 10**6))
        yield fake


def paystack_instance(
    fake: FakePaystack, tenant: str, *, name: str = "paystack", **overrides: Any
) -> InstanceView:
    config = {
        "secret_key": fake.secret_key,
        "public_key": fake.public_key,
        "base_url": fake.base_url,
        "callback_url": "https://shop.example/paid",
        "timeout_s": 2.0,
        **overrides,
    }
    return runtime.registry().create_instance(
        "paystack", config, tenant_id=tenant, display_name=name, is_active=True
    )


def pay(
    tenant: str, *, token: str | None = None, amount: str = "5000", order: str | None = None
) -> PaymentReceipt:
    return request_payment(
        order or f"ord-{uuid.uuid4().hex[:8]}",
        Decimal(amount),
        "NGN",
        "ada@example.com",
        tenant_id=tenant,
        payment_token=token,
    )


def wait_status(payment_id: Any, *states: str, timeout_s: float = 20.0) -> PaymentView:
    """Wait until the payment is in one of ``states``; fail saying where it is instead."""

    def reached() -> PaymentView | None:
        view = get_payment(payment_id)
        return view if view.status.value in states else None

    try:
        return wait_for(reached, timeout_s=timeout_s)  # type: ignore[no-any-return]
    except AssertionError:
        view = get_payment(payment_id)
        raise AssertionError(
            f"payment is {view.status.value} ({view.error}), not {states}; attempts: "
            f"{[(a.operation, a.outcome, a.message) for a in view.attempts]}"
        ) from None


def charged_payment(fake: FakePaystack, tenant: str, amount: str = "5000") -> PaymentView:
    """A saved-card payment that succeeded at the fake Paystack."""
    receipt = pay(tenant, token=GOOD_AUTHORIZATION, amount=amount)
    view = wait_status(receipt.payment_id, "succeeded")
    assert fake.charges_count(view.provider_reference) == 1
    return view


def events_of(tap: EventTap, payment_id: Any, count: int) -> list[str]:
    """The types of the first ``count`` events a consumer sees for the payment."""
    key = str(payment_id)
    seen = tap.collect(lambda s: sum(e.get("payment_id") == key for e in s) >= count)
    return [e["type"] for e in seen if e.get("payment_id") == key]


def outbox_of(payment_id: Any) -> list[str]:
    """Event types written for the payment (the ledger's side of the events)."""
    with get_database().sessions() as session:
        rows = session.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars()
        return [r.event_type for r in rows if r.payload.get("payment_id") == str(payment_id)]


def receipts_of(reference: str) -> list[str]:
    with get_database().sessions() as session:
        rows = session.execute(
            select(WebhookReceipt.result)
            .where(WebhookReceipt.reference == reference)
            .order_by(WebhookReceipt.id)
        )
        return list(rows.scalars())


@pytest.fixture
def api_url(integration_env: dict[str, str]) -> Iterator[str]:
    """Tender's HTTP app served by a real uvicorn on a loopback port, in this process."""
    from surfaces.http.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout_s=10)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


# --- checkout and webhook -------------------------------------------------------------


def test_checkout_is_pending_until_the_signed_webhook_settles_it(
    worker, tenant, fake_paystack: FakePaystack, events: EventTap, api_url: str, monkeypatch
) -> None:
    monkeypatch.setenv("TENDER_SECRET_TEST_PAYSTACK", fake_paystack.secret_key)
    paystack_instance(fake_paystack, tenant, secret_key="env:TENDER_SECRET_TEST_PAYSTACK")
    receipt = pay(tenant, amount="1500.50")

    pending = wait_status(receipt.payment_id, "pending")
    assert pending.authorization_url and pending.authorization_url.startswith(
        "https://checkout.paystack.com/"
    )
    assert events_of(events, receipt.payment_id, 1) == ["payment.pending"]

    fake_paystack.set_status(receipt.reference, "success")  # the customer pays
    data = fake_paystack.event_data("charge.success", receipt.reference)
    answer = fake_paystack.send_webhook(f"{api_url}/webhooks/paystack", "charge.success", data)

    assert answer == 200
    view = get_payment(receipt.payment_id)
    assert view.status == "succeeded" and view.amount_minor == 150050
    assert events_of(events, receipt.payment_id, 2) == ["payment.pending", "payment.succeeded"]
    assert receipts_of(receipt.reference) == ["applied"]
    assert fake_paystack.charges_count(receipt.reference) == 1
    served = httpx.get(f"{api_url}/payments/{receipt.payment_id}").json()
    assert served["status"] == "succeeded"


# --- saved cards ----------------------------------------------------------------------


def test_saved_card_charge_succeeds_once(
    worker, tenant, fake_paystack: FakePaystack, events: EventTap
) -> None:
    instance = paystack_instance(fake_paystack, tenant)
    receipt = pay(tenant, token=GOOD_AUTHORIZATION, amount="250")

    view = wait_status(receipt.payment_id, "succeeded")

    assert view.instance_id == instance.id and view.provider == "paystack"
    assert view.provider_transaction_id is not None
    assert [(a.operation, a.outcome) for a in view.attempts] == [("charge", "succeeded")]
    assert events_of(events, receipt.payment_id, 1) == ["payment.succeeded"]
    assert fake_paystack.charges_count(receipt.reference) == 1
    assert fake_paystack.transaction(receipt.reference)["amount"] == 25000  # type: ignore[index]


def test_saved_card_decline_fails_with_the_banks_reason(
    worker, tenant, fake_paystack: FakePaystack, events: EventTap
) -> None:
    paystack_instance(fake_paystack, tenant)
    receipt = pay(tenant, token=DECLINED_AUTHORIZATION)

    view = wait_status(receipt.payment_id, "failed")

    assert view.error_code == "declined" and view.error == "Insufficient Funds"
    assert [(a.operation, a.outcome) for a in view.attempts] == [("charge", "failed")]
    assert events_of(events, receipt.payment_id, 1) == ["payment.failed"]


# --- wrong key ------------------------------------------------------------------------


def test_wrong_key_marks_the_instance_error_and_charges_nothing(
    worker, tenant, fake_paystack: FakePaystack
) -> None:
    instance = paystack_instance(fake_paystack, tenant, secret_key="sk_test_revoked_or_mistyped")
    receipt = pay(tenant, token=GOOD_AUTHORIZATION)

    view = wait_status(receipt.payment_id, "failed")

    assert [(a.operation, a.outcome) for a in view.attempts] == [("charge", "config_error")]
    assert "secret key rejected" in (view.attempts[0].message or "")
    assert "sk_test_revoked" not in str(view.model_dump())
    broken = runtime.registry().get_instance(instance.id)
    assert broken.status == "error" and "secret key rejected" in (broken.status_message or "")
    assert not broken.routable
    assert fake_paystack.charges_count(receipt.reference) == 0


# --- timeout, then reconcile ----------------------------------------------------------


@pytest.fixture
def reconcile_now() -> Iterator[None]:
    """Reconcile verifies an unknown payment at once. Pending ones keep their hourly
    schedule: the session's ledger holds dozens that earlier tests left waiting on their
    customers, and verifying them all on every run is not what this test is about."""
    names = {
        "TENDER_RECONCILE_AGE_S": "0.01",
        "TENDER_RECONCILE_UNKNOWN_BACKOFF_S": "[0.01]",
    }
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    reset_settings()
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    reset_settings()


def reconciled(payment_id: uuid.UUID, *states: str, timeout_s: float = 60.0) -> PaymentView:
    """Run reconcile here, as beat would, until the payment reaches one of ``states``.

    One run verifies the oldest due payments of the whole ledger, within a time budget,
    and the session's ledger is shared with every earlier test: a run may end before it
    reaches this payment, or find another run holding the lock. Beat's next run goes on
    where it stopped; so does this loop. A failure says what each run reported.
    """
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reports.append(reconcile_task.apply().get())
        view = get_payment(payment_id)
        if view.status.value in states:
            return view
        time.sleep(0.2)
    raise AssertionError(f"payment is {view.status.value} after reconcile runs: {reports}")


def test_timeout_is_unknown_and_reconcile_finds_the_one_charge(
    worker, tenant, fake_paystack: FakePaystack, events: EventTap, reconcile_now
) -> None:
    paystack_instance(fake_paystack, tenant, timeout_s=0.5)  # the fake holds answers 1.5 s
    fake_paystack.fault = "slow"
    receipt = pay(tenant, token=GOOD_AUTHORIZATION)

    unknown = wait_status(receipt.payment_id, "unknown")
    assert [(a.operation, a.outcome) for a in unknown.attempts] == [
        ("charge", "unknown"),
        ("verify", "unknown"),
    ]
    assert events_of(events, receipt.payment_id, 1) == ["payment.unknown"]

    fake_paystack.fault = None  # Paystack answers again
    view = reconciled(receipt.payment_id, "succeeded")
    assert [(a.operation, a.outcome) for a in view.attempts][-1] == ("verify", "succeeded")
    assert fake_paystack.charges_count(receipt.reference) == 1
    assert events_of(events, receipt.payment_id, 2) == ["payment.unknown", "payment.succeeded"]


# --- duplicate reference --------------------------------------------------------------


@pytest.mark.parametrize(
    ("card", "outcome"),
    [(GOOD_AUTHORIZATION, "succeeded"), (DECLINED_AUTHORIZATION, "failed")],
    ids=["charged-before", "declined-before"],
)
def test_reference_paystack_already_has_reports_its_real_outcome(
    worker, tenant, fake_paystack: FakePaystack, card: str, outcome: str
) -> None:
    paystack_instance(fake_paystack, tenant)
    order = f"ord-{uuid.uuid4().hex[:8]}"
    reference = derive_reference(f"order:{order}", tenant)
    # A predecessor's charge reached Paystack, but its worker died before recording it.
    first = httpx.post(
        f"{fake_paystack.base_url}/transaction/charge_authorization",
        headers={"Authorization": f"Bearer {fake_paystack.secret_key}"},
        json={
            "email": "ada@example.com",
            "amount": 500000,
            "currency": "NGN",
            "authorization_code": card,
            "reference": reference,
        },
    )
    assert first.status_code == 200

    receipt = pay(tenant, token=GOOD_AUTHORIZATION, order=order)
    assert receipt.reference == reference
    wait_status(receipt.payment_id, outcome)
    with finished_tasks() as done:  # the broker delivering the task again changes nothing
        again = {
            process_payment_task.apply_async(args=[str(receipt.payment_id)]).id for _ in range(2)
        }
        wait_for(lambda: again <= done, timeout_s=30)

    view = get_payment(receipt.payment_id)
    assert view.status == outcome
    assert [(a.operation, a.outcome) for a in view.attempts] == [("charge", outcome)]
    assert fake_paystack.charges_count(reference) == 1
    assert outbox_of(receipt.payment_id) == [f"payment.{outcome}"]
