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
    monkeypatch.setenv("TENDER_RECONCILE_UNKNOWN_BACKOFF_S", "[0.05, 0.05, 0.05]")
    monkeypatch.setenv("TENDER_RECONCILE_PENDING_BACKOFF_S", "[0.05]")
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
    while the checkout lives; at its expiry it first asks the provider to end the
    checkout, verifies once more, and only then fails it as expired (issue 33)."""
    from typing import ClassVar

    from sqlalchemy import update

    from providers.base import PaymentOutcome, PaymentRequest
    from providers.sandbox import SandboxProvider
    from workers.ledger.records import Payment

    calls: list[str] = []

    class HostedPage(SandboxProvider):
        name: ClassVar[str] = "hostedpage"
        checkout_lifetime_s: ClassVar[float] = 7200

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            return PaymentOutcome(
                status=OutcomeStatus.PENDING,
                reference=request.reference,
                amount_minor=request.amount_minor,
                currency=request.currency,
                authorization_url="https://checkout.example/pay/abc",
            )

        async def expire_checkout(self, reference: str, *, provider_id: str | None = None) -> bool:
            calls.append("expire")
            return True

        async def verify_payment(
            self, reference: str, *, provider_id: str | None = None
        ) -> PaymentOutcome:
            calls.append("verify")
            return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)

    runtime.registry().register_plugin("hostedpage", HostedPage)
    # the instance's own lifetime (an hour) wins over the plugin's default (two)
    runtime.registry().create_instance("hostedpage", {"checkout_lifetime_s": 3600}, is_active=True)
    fields = _validated("o-page", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    pending = get_payment(payment.id)
    expires_at = pending.expires_at
    assert expires_at is not None
    assert abs((expires_at - payment.created_at).total_seconds() - 3600) < 1
    publisher = Recording()
    assert run(publisher).still_open == [payment.id]
    assert get_payment(payment.id).status == "pending" and publisher.published == []
    assert calls == ["verify"]

    with get_database().transaction() as session:  # an hour and a minute later
        session.execute(
            update(Payment)
            .where(Payment.id == payment.id)
            .values(expires_at=utcnow() - timedelta(seconds=60))
        )
    assert run(publisher).resolved == {payment.id: "failed"}
    assert calls == ["verify", "expire", "verify"]  # ended at the provider, then verified
    view = get_payment(payment.id)
    assert view.status == "failed" and view.error_code == "expired"
    assert [t for t, _ in publisher.published] == ["payment.failed"]


def test_an_expired_checkout_paid_at_the_last_moment_succeeds(fast_reconcile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The last verify after expiry is the truth: a payment made just before the checkout
    ended is succeeded, not expired."""
    from sqlalchemy import update

    from workers.ledger.records import Payment

    instance = runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    payment_id = pending_payment("o-last")
    plugin = runtime.registry().plugin_for(instance)
    plugin.settle(get_payment(payment_id).provider_reference, OutcomeStatus.SUCCEEDED)  # type: ignore[attr-defined]
    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    publisher = Recording()
    assert run(publisher).resolved == {payment_id: "succeeded"}
    assert [t for t, _ in publisher.published] == ["payment.succeeded"]


def _place(payment_id: Any, status: str, checks: int, age_s: float) -> None:
    from sqlalchemy import update

    from workers.ledger.records import Payment

    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(
                status=status,
                checks=checks,
                error_code="expired" if status == "failed" else None,
                updated_at=utcnow() - timedelta(seconds=age_s),
                expires_at=utcnow() + timedelta(days=30),
            )
        )


def test_the_backoff_schedule_decides_which_payments_are_verified(sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Kill Bill's janitor schedule: unknown at 5 min, 1 h, then daily (three times),
    pending at 1 h, then daily until its expiry; nothing in between (issue 33)."""
    from sqlalchemy import select

    from workers.ledger.records import Payment

    reset_settings()
    settings = get_settings()
    assert settings.reconcile_unknown_backoff_s == (300, 3600, 86400, 86400, 86400)
    assert settings.reconcile_pending_backoff_s == (3600, 86400)
    cases = {
        # (status, checks, seconds since the last change or check): due?
        ("unknown", 0, 200): False,
        ("unknown", 0, 400): True,
        ("unknown", 1, 400): False,
        ("unknown", 1, 3700): True,
        ("unknown", 2, 3700): False,
        ("unknown", 4, 90000): True,  # the last check
        ("unknown", 5, 10**7): False,  # past the last: alerted, never again
        ("pending", 0, 400): False,
        ("pending", 0, 3700): True,
        ("pending", 1, 3700): False,
        ("pending", 1, 90000): True,
        ("pending", 9, 90000): True,  # daily until the expiry
        ("pending", 9, 3700): False,
        ("failed", 0, 90000): True,  # one late check of an expired checkout, a day on
        ("failed", 0, 3700): False,
        ("failed", 1, 10**7): False,  # checked late once: never again
    }
    ids = {}
    for n, case in enumerate(cases):
        fields = _validated(f"o-b{n}", "10.00", "NGN", "ada@example.com", "card", None, None, None)
        payment, _ = record_payment(get_database(), fields)
        _place(payment.id, *case)
        ids[payment.id] = case
    with get_database().sessions() as session:
        due = set(
            session.execute(
                select(Payment.id).where(reconcile_module._due(utcnow(), settings))
            ).scalars()
        )
    assert {ids[i] for i in due} == {case for case, want in cases.items() if want}


def test_an_unknown_payment_alerts_once_after_its_last_check(fast_reconcile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typing import ClassVar

    from providers.base import PaymentOutcome, PaymentRequest
    from providers.errors import OutcomeUnknown
    from providers.sandbox import SandboxProvider

    class Silent(SandboxProvider):
        name: ClassVar[str] = "silent"

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            raise OutcomeUnknown("read timeout", provider=self.name, provider_id="ch_given_1")

        async def verify_payment(
            self, reference: str, *, provider_id: str | None = None
        ) -> PaymentOutcome:
            raise OutcomeUnknown("still no answer", provider=self.name)

    runtime.registry().register_plugin("silent", Silent)
    runtime.registry().create_instance("silent", {}, is_active=True)
    fields = _validated("o-silent", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    view = get_payment(payment.id)
    # the id the provider gave before its answer was lost is kept at once
    assert view.status == "unknown" and view.provider_transaction_id == "ch_given_1"
    publisher = Recording()
    alerts = [a for _ in range(5) for a in run(publisher).alerts]  # schedule of three checks
    assert len(alerts) == 1 and str(payment.id) in alerts[0].title
    assert [t for t, _ in publisher.published] == ["alert.raised"]
    assert get_payment(payment.id).status == "unknown"


def _lifecycle_plugin(name: str, answers: list[Any]) -> type:
    """A checkout plugin whose verify answers ``answers`` in turn: (status, provider status)."""
    from typing import ClassVar

    from providers.base import Lifecycle, PaymentOutcome, PaymentRequest, Stage
    from providers.sandbox import SandboxProvider

    doc = "https://example.com/lifecycle"

    class Checkout(SandboxProvider):
        lifecycle: ClassVar[Lifecycle] = Lifecycle(
            (
                Stage("open", OutcomeStatus.PENDING, doc, payable=True),
                Stage("processing", OutcomeStatus.PENDING, doc),  # money on its way
                Stage("paid", OutcomeStatus.SUCCEEDED, doc),
            )
        )

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            return PaymentOutcome(
                status=OutcomeStatus.PENDING,
                reference=request.reference,
                provider_transaction_id="co_1",
                amount_minor=request.amount_minor,
                currency=request.currency,
                authorization_url="https://checkout.example/pay/1",
                provider_status="open",
            )

        async def verify_payment(
            self, reference: str, *, provider_id: str | None = None
        ) -> PaymentOutcome:
            status, provider_status = answers.pop(0)
            return PaymentOutcome(
                status=status,
                reference=reference,
                amount_minor=1000,
                currency="NGN",
                provider_status=provider_status,
            )

    Checkout.name = name  # type: ignore[misc]
    runtime.registry().register_plugin(name, Checkout)
    runtime.registry().create_instance(name, {}, is_active=True)
    return Checkout


def _expire_now(payment_id: Any, **values: Any) -> None:
    from sqlalchemy import update

    from workers.ledger.records import Payment

    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(expires_at=utcnow() - timedelta(seconds=1), **values)
        )


def test_money_in_flight_at_expiry_is_not_failed(fast_reconcile) -> None:  # type: ignore[no-untyped-def]
    """Past its expiry, a payment the provider holds in a status its lifecycle lists as not
    payable (a debit processing, a capture under review) stays pending: failing it would
    fail a paid order. One still payable (an open page) is failed as expired."""
    answers: list[Any] = [
        (OutcomeStatus.PENDING, "processing"),
        (OutcomeStatus.PENDING, "open"),
        (OutcomeStatus.PENDING, "open"),
    ]
    _lifecycle_plugin("inflight", answers)
    fields = _validated("o-fly", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    in_flight, _ = record_payment(get_database(), fields)
    fields = _validated("o-open", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payable, _ = record_payment(get_database(), fields)
    for payment in (in_flight, payable):
        processor().process(payment.id)
        _expire_now(payment.id)
    _expire_now(payable.id, updated_at=utcnow() + timedelta(seconds=5))  # checked second
    report = run(Recording())
    assert report.resolved == {payable.id: "failed"}
    assert get_payment(in_flight.id).status == "pending"
    assert get_payment(payable.id).error_code == "expired"


def test_a_failed_checkout_gets_one_late_check_and_money_found_there_wins(
    fast_reconcile,
) -> None:  # type: ignore[no-untyped-def]
    """A payment reconcile failed as expired is verified once more a day later (here: the
    test's short schedule): a success whose webhook was lost makes it succeeded, with
    previous_status 'failed' and an alert. Without money, it is not checked again."""
    answers: list[Any] = [
        (OutcomeStatus.PENDING, "open"),  # at expiry: still payable -> failed, expired
        (OutcomeStatus.SUCCEEDED, "paid"),  # the late check: the customer paid after all
        (OutcomeStatus.PENDING, "open"),  # second payment at expiry
        (OutcomeStatus.PENDING, "open"),  # its late check: nothing
    ]
    _lifecycle_plugin("latecheck", answers)

    def checkout(order: str) -> Any:
        fields = _validated(order, "10.00", "NGN", "ada@example.com", "card", None, None, None)
        payment, _ = record_payment(get_database(), fields)
        processor().process(payment.id)
        return payment.id

    paid_late = checkout("o-late")
    publisher = Recording()
    _expire_now(paid_late)
    assert run(publisher).resolved == {paid_late: "failed"}
    assert run(publisher).resolved == {paid_late: "succeeded"}
    assert [t for t, _ in publisher.published] == [
        "payment.failed",
        "payment.succeeded",
        "alert.raised",
    ]
    late_event = publisher.published[1][1]
    assert late_event["previous_status"] == "failed" and late_event["error"] is None

    never = checkout("o-never")
    _expire_now(never)
    assert run(publisher).resolved == {never: "failed"}
    assert run(publisher).resolved == {}  # its one late check: nothing there
    assert run(publisher).resolved == {} and not answers  # and never again
    assert get_payment(never).status == "failed"
