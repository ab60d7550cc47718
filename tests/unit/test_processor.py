"""PaymentProcessor rules on the embedded database, without a broker: claims, leases,
bounded redelivery, fallbacks. (The same rules run through a real worker in
tests/integration.)"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from config.celery import MAX_REDELIVERIES
from config.settings import get_settings
from providers.base import utcnow
from providers.sandbox import charge_book
from registry.db import get_database
from workers import runtime
from workers.events.relay import InlineRelay
from workers.ledger.records import Payment
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import Busy, Done, PaymentProcessor


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)


def recording_processor() -> tuple[PaymentProcessor, RecordingPublisher]:
    """A processor on this process's database and registry, publishing into a list."""
    publisher = RecordingPublisher()
    relay = InlineRelay(get_database(), publisher)  # type: ignore[arg-type]
    proc = PaymentProcessor(
        get_database(), runtime.registry(), runtime.provider_loop(), relay, get_settings()
    )
    return proc, publisher


@pytest.fixture
def processor(sqlite_url: str) -> tuple[PaymentProcessor, RecordingPublisher]:
    return recording_processor()


def new_payment(order_id: str = "o-1", email: str = "ada@example.com") -> uuid.UUID:
    fields = _validated(order_id, "10.00", "NGN", email, "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    return payment.id


def sandbox(book: str, **config: Any) -> Any:
    return runtime.registry().create_instance(
        "sandbox", {"charge_book": book, **config}, is_active=True
    )


def test_processing_twice_charges_once_and_emits_one_event(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, publisher = processor
    book = str(tmp_path / "book.db")
    sandbox(book)
    payment_id = new_payment()
    assert proc.process(payment_id) == Done(state=get_payment(payment_id).status)
    assert proc.process(payment_id) == Done(None)
    assert charge_book(book).count() == 1
    assert [t for t, _ in publisher.published] == ["payment.succeeded"]


def test_live_claim_makes_a_second_delivery_wait(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    sandbox(str(tmp_path / "book.db"))
    payment_id = new_payment()
    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(
                status="processing",
                lease_token=uuid.uuid4(),
                lease_expires_at=utcnow() + timedelta(seconds=30),
            )
        )
    result = proc.process(payment_id)
    assert isinstance(result, Busy) and 25 < result.retry_in_s <= 31
    assert get_payment(payment_id).status == "processing"


def test_redelivery_is_bounded_then_left_to_reconcile(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, publisher = processor
    book = str(tmp_path / "book.db")
    sandbox(book)
    payment_id = new_payment()
    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(
                status="processing",
                claims=MAX_REDELIVERIES,
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "unknown" and view.error_code == "worker_lost"
    assert charge_book(book).count() == 0
    assert [t for t, _ in publisher.published] == ["payment.unknown"]


def test_plugin_this_process_cannot_build_falls_back_without_disabling_it(
    processor, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    book = str(tmp_path / "book.db")
    monkeypatch.setenv("SANDBOX_KEY", "sk_from_env")
    broken = runtime.registry().create_instance(
        "sandbox", {"charge_book": book, "api_key": "env:SANDBOX_KEY"}, priority=1, is_active=True
    )
    backup = runtime.registry().create_instance(
        "sandbox", {"charge_book": book}, priority=2, is_active=True
    )
    monkeypatch.delenv("SANDBOX_KEY")  # the worker cannot resolve the key any more
    runtime.registry().refresh(force=True)
    payment_id = new_payment()
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "succeeded" and view.instance_id == backup.id
    assert [a.outcome for a in view.attempts] == ["config_error", "succeeded"]
    assert "SANDBOX_KEY" in (view.attempts[0].message or "")
    # a missing env reference is this process's problem: other workers keep the instance
    assert runtime.registry().get_instance(broken.id).status == "active"


def test_takeover_before_any_instance_was_named_routes_as_new(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    book = str(tmp_path / "book.db")
    instance = sandbox(book)
    payment_id = new_payment()
    with get_database().transaction() as session:  # a worker died right after claiming
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(status="processing", claims=1, lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "succeeded" and view.instance_id == instance.id
    assert [a.operation for a in view.attempts] == ["charge"]
    assert charge_book(book).count() == 1


def test_routing_hint_in_the_message_gives_the_same_result(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from workers.payments.processor import RouteHint

    proc, _ = processor
    book = str(tmp_path / "book.db")
    instance = sandbox(book)
    payment_id = new_payment()
    view = get_payment(payment_id)
    proc.process(payment_id, RouteHint(view.tenant_id, view.currency, view.idempotency_key))
    view = get_payment(payment_id)
    assert view.status == "succeeded" and view.instance_id == instance.id
    # a wrong hint (another tenant, whose own instance it would route to) is corrected
    # from the row: the global payment is charged and recorded at the global instance
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book}, tenant_id="someone-else", is_active=True
    )
    other = new_payment("o-2")
    proc.process(other, RouteHint("someone-else", "NGN", "order:o-2"))
    view = get_payment(other)
    assert view.status == "succeeded" and view.instance_id == instance.id


def test_tokens_differ_across_forked_processes() -> None:
    import os

    from workers.ledger.records import new_token

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, new_token().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) != new_token().bytes


@pytest.mark.parametrize(
    ("paid", "currency"),
    [(-1, "same"), (None, "same"), (0, None)],
    ids=["a-kobo-short", "no-amount", "no-currency"],
)
def test_success_for_another_or_no_amount_is_never_reported_as_paid(  # type: ignore[no-untyped-def]
    processor, tmp_path, paid, currency
) -> None:
    """A success for another amount, or one that does not say what was paid (a plugin that
    could not read the provider's amount), is ``unknown`` with an alert (issue 33, item 7)."""
    from typing import ClassVar

    from sqlalchemy import select

    from providers.base import OutcomeStatus, PaymentOutcome, PaymentRequest
    from providers.sandbox import SandboxProvider
    from workers.ledger.outbox import outbox_table

    class ShortPaying(SandboxProvider):
        """Answers success, for less than asked or for an amount it does not give."""

        name: ClassVar[str] = "shortpaying"

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            return PaymentOutcome(
                status=OutcomeStatus.SUCCEEDED,
                reference=request.reference,
                amount_minor=None if paid is None else request.amount_minor + paid,
                currency=request.currency if currency == "same" else None,
            )

    proc, publisher = processor
    runtime.registry().register_plugin("shortpaying", ShortPaying)
    runtime.registry().create_instance("shortpaying", {}, is_active=True)
    payment_id = new_payment()
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "unknown" and view.error_code == "amount_mismatch"
    assert [t for t, _ in publisher.published] == ["payment.unknown"]
    with get_database().sessions() as session:
        types = session.execute(select(outbox_table.c.event_type)).scalars().all()
    assert "alert.raised" in types


def test_provider_error_text_is_scrubbed_of_secrets(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typing import ClassVar

    from providers.base import PaymentOutcome, PaymentRequest
    from providers.errors import ProviderUnavailable
    from providers.sandbox import SandboxProvider

    class Leaky(SandboxProvider):
        """An SDK that quotes the request headers in its error (it happens)."""

        name: ClassVar[str] = "leaky"

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            key = self.settings.api_key.get_secret_value()
            raise ProviderUnavailable(f"connect failed; Authorization: Bearer {key}")

    proc, publisher = processor
    runtime.registry().register_plugin("leaky", Leaky)
    runtime.registry().create_instance("leaky", {"api_key": "sk_leaky_secret_1234"}, is_active=True)
    payment_id = new_payment()
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "failed" and view.error_code == "providers_unavailable"
    everything = view.model_dump_json() + repr(publisher.published)
    assert "sk_leaky_secret_1234" not in everything
    assert "***" in (view.error or "")


@pytest.mark.parametrize("refusal", ["amount_too_small", "permission_error"])
def test_a_refusal_of_one_payment_falls_through_and_alerts_but_leaves_the_instance_on(  # type: ignore[no-untyped-def]
    processor, tmp_path, refusal
) -> None:
    """A merchant-configuration refusal (an amount under Stripe's minimum, a restricted key
    without the permission) charged nothing: the next instance takes the payment, an
    alert names the instance and the refusal, and the instance stays usable for the
    payments it can take (issue 33, item 6). Only a refused key puts it in ``error``."""
    from sqlalchemy import select

    from tests.fakes.stripe.server import FakeStripe
    from workers.ledger.outbox import outbox_table

    proc, _ = processor
    with FakeStripe() as fake:
        key = fake.restricted_key if refusal == "permission_error" else fake.secret_key
        stripe_view = runtime.registry().create_instance(
            "stripe",
            {"secret_key": key, "webhook_secret": fake.webhook_secret, "base_url": fake.base_url},
            priority=1,
            is_active=True,
        )
        runtime.registry().create_instance(
            "sandbox", {"charge_book": str(tmp_path / "b.db")}, priority=2, is_active=True
        )
        amount = "0.30" if refusal == "amount_too_small" else "10.00"
        payments = []
        for order in ("o-small", "o-small-2"):
            fields = _validated(order, amount, "USD", "ada@example.com", "card", None, None, None)
            payment, _ = record_payment(
                get_database(), fields, payment_token="pm_card_visa", box=runtime.registry().box
            )
            payments.append(payment)
        proc.process(payments[0].id)
        # a worker makes a processor per task: the cooldown holds across them
        PaymentProcessor(
            get_database(), runtime.registry(), runtime.provider_loop(), proc.relay, get_settings()
        ).process(payments[1].id)
        payment = payments[0]
    view = get_payment(payment.id)
    assert view.status == "succeeded" and view.provider == "sandbox"
    assert [(a.operation, a.outcome) for a in view.attempts] == [
        ("charge", "refused"),
        ("charge", "succeeded"),
    ]
    assert runtime.registry().get_instance(stripe_view.id).status == "active"
    with get_database().sessions() as session:
        alerts = [
            row.payload
            for row in session.execute(
                select(outbox_table.c.event_type, outbox_table.c.payload)
            ).all()
            if row.event_type == "alert.raised"
        ]
    assert len(alerts) == 1 and stripe_view.display_name in str(alerts[0])  # two refusals
    assert refusal.split("_")[0] in str(alerts[0]).lower()


def test_recovery_with_no_provider_id_replays_the_charge_where_verify_needs_one(  # type: ignore[no-untyped-def]
    processor, tmp_path
) -> None:
    """A provider that reads payments by its own id only (PayPal) cannot be verified for a
    payment the ledger holds no id of: recovery repeats the idempotent charge instead of
    verifying (issue 33, item 1), and keeps the id it answers with."""
    from typing import ClassVar

    from providers.base import Capability, OutcomeStatus, PaymentOutcome, PaymentRequest
    from providers.errors import OutcomeUnknown
    from providers.sandbox import SandboxProvider

    calls: list[str] = []

    class ById(SandboxProvider):
        name: ClassVar[str] = "byidonly"
        capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.REPLAYS_TO_RECOVER})

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            calls.append("charge")
            return PaymentOutcome(
                status=OutcomeStatus.SUCCEEDED,
                reference=request.reference,
                provider_transaction_id="ORDER-1",
                amount_minor=request.amount_minor,
                currency=request.currency,
            )

        async def verify_payment(
            self, reference: str, *, provider_id: str | None = None
        ) -> PaymentOutcome:
            calls.append("verify")
            raise OutcomeUnknown("by id only", provider=self.name)

    proc, _ = processor
    runtime.registry().register_plugin("byidonly", ById)
    instance = runtime.registry().create_instance("byidonly", {}, is_active=True)
    payment_id = new_payment()
    with get_database().transaction() as session:  # its worker died mid-charge
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(
                status="processing",
                claims=1,
                instance_id=instance.id,
                plugin_name="byidonly",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert calls == ["charge"]
    assert view.status == "succeeded" and view.provider_transaction_id == "ORDER-1"
