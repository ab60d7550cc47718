"""Reconcile on the embedded database: open payments resolve once, and payments that stay
pending cannot starve the rest."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from config.settings import get_settings, reset_settings
from providers.base import OutcomeStatus, utcnow
from registry.db import get_database
from workers import runtime
from workers.events.relay import EventPublisher
from workers.payments import reconcile as reconcile_module
from workers.payments.client import _validated, get_payment, record_payment
from workers.tasks import processor


class Recording(EventPublisher):
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)


@pytest.fixture
def fast_reconcile(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENDER_RECONCILE_AGE_S", "0.05")
    reset_settings()


def pending_payment(order_id: str) -> Any:
    fields = _validated(
        order_id, "10.00", "NGN", "ada@example.com", "bank_transfer", None, None, None
    )
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)  # the sandbox answers pending for bank transfers
    assert get_payment(payment.id).status == "pending"
    return payment.id


def run(publisher: Recording) -> reconcile_module.ReconcileReport:
    time.sleep(0.1)  # older than the reconcile age
    return reconcile_module.reconcile(
        get_database(),
        runtime.registry(),
        runtime.provider_loop(),
        publisher,
        get_settings(),
        lambda payment_id: True,
    )


def test_still_pending_payments_rotate_so_none_starves(
    fast_reconcile, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    ids = [pending_payment(f"o-{i}") for i in range(3)]
    monkeypatch.setattr(reconcile_module, "BATCH", 2)
    first = run(Recording())
    second = run(Recording())
    assert set(first.still_open) | set(second.still_open) == set(ids)


def test_pending_payment_resolves_once_with_one_event(fast_reconcile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    instance = runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    payment_id = pending_payment("o-9")
    plugin = runtime.registry().plugin_for(instance)
    plugin.settle(get_payment(payment_id).provider_reference, OutcomeStatus.SUCCEEDED)  # type: ignore[attr-defined]
    publisher = Recording()
    assert run(publisher).resolved == {payment_id: "succeeded"}
    assert run(publisher).resolved == {}
    assert [t for t, _ in publisher.published] == ["payment.succeeded"]
    assert get_payment(payment_id).status == "succeeded"


def lost_payments(n: int, prefix: str) -> list[Any]:
    ids = []
    for i in range(n):
        fields = _validated(
            f"{prefix}-{i}", "10.00", "NGN", "ada@example.com", "card", None, None, None
        )
        payment, _ = record_payment(get_database(), fields)
        ids.append(payment.id)
    return ids


def reenqueued(enqueue: Any) -> list[Any]:
    time.sleep(0.1)  # older than the reconcile age
    return reconcile_module.reconcile(
        get_database(),
        runtime.registry(),
        runtime.provider_loop(),
        Recording(),
        get_settings(),
        enqueue,
    ).reenqueued


def test_one_run_enqueues_every_lost_payment_again_in_batches(fast_reconcile, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A restarted Redis can lose thousands of messages: one run takes them all (batch
    after batch, up to LOST_BATCHES), not one batch a run."""
    monkeypatch.setattr(reconcile_module, "BATCH", 2)
    ids = lost_payments(5, "lost")
    sent: list[Any] = []
    assert sorted(reenqueued(lambda p: sent.append(p) or True)) == sorted(ids)
    assert sorted(sent) == sorted(ids)  # each once


def test_a_payment_enqueued_again_waits_its_turn_behind_the_others(
    fast_reconcile, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Each payment enqueued again moves to the back: while its message waits in a
    backlog, the next run enqueues the rest, not the same ones again."""
    monkeypatch.setattr(reconcile_module, "BATCH", 2)
    monkeypatch.setattr(reconcile_module, "LOST_BATCHES", 1)
    ids = lost_payments(4, "turn")
    first = reenqueued(lambda p: True)
    second = reenqueued(lambda p: True)
    assert len(first) == 2 and len(second) == 2
    assert sorted(first + second) == sorted(ids)


def test_a_refused_enqueue_stops_the_run_and_is_tried_again(fast_reconcile, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ids = lost_payments(3, "down")
    attempts: list[Any] = []

    def broker_down(payment_id: Any) -> bool:
        attempts.append(payment_id)
        return False

    assert reenqueued(broker_down) == [] and len(attempts) == 1  # stops at the first refusal
    assert sorted(reenqueued(lambda p: True)) == sorted(ids)  # nothing was moved back


def test_expired_leases_are_each_enqueued_once_a_run(fast_reconcile, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Processing payments whose worker died: taken batch after batch by lease expiry,
    each once, though their rows do not change until a worker claims them."""
    from sqlalchemy import update

    from workers.ledger.records import Payment

    monkeypatch.setattr(reconcile_module, "BATCH", 2)
    ids = lost_payments(5, "lease")
    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id.in_(ids))
            .values(status="processing", lease_expires_at=utcnow() - timedelta(seconds=5))
            .execution_options(synchronize_session=False)
        )
    sent: list[Any] = []
    reenqueued(lambda p: sent.append(p) or True)
    assert sorted(sent) == sorted(ids)


def test_reconcile_verifies_by_the_providers_own_id(fast_reconcile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Reconcile hands verify the id the ledger holds (a PayPal order, a Stripe Checkout
    Session), so the plugin reads the payment by it instead of searching or re-creating
    (issue 33, item 1 and 4)."""
    from typing import ClassVar

    from providers.base import PaymentOutcome, PaymentRequest
    from providers.sandbox import SandboxProvider

    asked: list[str | None] = []

    class ById(SandboxProvider):
        name: ClassVar[str] = "byid"

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            return PaymentOutcome(
                status=OutcomeStatus.PENDING,
                reference=request.reference,
                provider_transaction_id="ORDER-8NV12345",
                amount_minor=request.amount_minor,
                currency=request.currency,
            )

        async def verify_payment(
            self, reference: str, *, provider_id: str | None = None
        ) -> PaymentOutcome:
            asked.append(provider_id)
            return PaymentOutcome(status=OutcomeStatus.PENDING, reference=reference)

    runtime.registry().register_plugin("byid", ById)
    runtime.registry().create_instance("byid", {}, is_active=True)
    fields = _validated("o-id", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    assert get_payment(payment.id).status == "pending"
    run(Recording())
    assert asked == ["ORDER-8NV12345"]


def test_a_checkout_with_no_transaction_yet_waits_out_its_lifetime(
    fast_reconcile, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A hosted checkout may have no transaction at the provider until the customer's
    first attempt (Flutterwave's "No transaction was found"): reconcile leaves it pending
    while the checkout lives, and only then fails it as expired (issue 33, item 3)."""
    from typing import ClassVar

    from sqlalchemy import update

    from providers.base import PaymentOutcome, PaymentRequest
    from providers.sandbox import SandboxProvider
    from workers.ledger.records import Payment

    class HostedPage(SandboxProvider):
        name: ClassVar[str] = "hostedpage"
        checkout_lifetime_s: ClassVar[float] = 3600

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            return PaymentOutcome(
                status=OutcomeStatus.PENDING,
                reference=request.reference,
                amount_minor=request.amount_minor,
                currency=request.currency,
                authorization_url="https://checkout.example/pay/abc",
            )

        async def verify_payment(
            self, reference: str, *, provider_id: str | None = None
        ) -> PaymentOutcome:
            return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)

    runtime.registry().register_plugin("hostedpage", HostedPage)
    runtime.registry().create_instance("hostedpage", {}, is_active=True)
    fields = _validated("o-page", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    publisher = Recording()
    assert run(publisher).still_open == [payment.id]
    assert get_payment(payment.id).status == "pending" and publisher.published == []

    with get_database().transaction() as session:  # an hour and a minute later
        session.execute(
            update(Payment)
            .where(Payment.id == payment.id)
            .values(created_at=utcnow() - timedelta(seconds=3660))
        )
    assert run(publisher).resolved == {payment.id: "failed"}
    view = get_payment(payment.id)
    assert view.status == "failed" and view.error_code == "expired"
    assert [t for t, _ in publisher.published] == ["payment.failed"]
