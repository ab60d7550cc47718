"""A pending payment carries what billing must show the customer (issue 34): the sandbox
answers bank transfers with the account to pay into; the ledger keeps it, the API shows it
and the payment.pending event carries it; a payment no longer pending shows none."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from providers.base import PaymentOutcome, customer_action
from registry.db import get_database
from workers import runtime
from workers.ledger.outbox import OutboxEvent
from workers.payments.client import _validated, get_payment, record_payment
from workers.tasks import processor


def test_a_bank_transfer_payment_shows_the_account_to_pay_into(
    sqlite_url: str, tmp_path: Path
) -> None:
    runtime.reset()
    runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "book.db")}, is_active=True
    )
    fields = _validated(
        "ord-transfer", "10.00", "NGN", "ada@example.com", "bank_transfer", None, None, None
    )
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)

    view = get_payment(payment.id)
    assert view.status == "pending", view.error
    assert view.next_action is not None
    action = view.next_action
    assert action["type"] == "bank_transfer" and action["url"] == view.authorization_url
    transfer = action["bank_transfer"]
    assert transfer["reference"] == view.provider_reference
    assert transfer["amount"] == "10.00" and transfer["currency"] == "NGN"
    assert transfer["account_number"].isdigit()
    with get_database().sessions() as session:
        payloads = session.execute(
            select(OutboxEvent.payload).where(OutboxEvent.event_type == "payment.pending")
        ).scalars()
        event = next(p for p in payloads if p["payment_id"] == str(payment.id))
    assert event["next_action"] == action


def test_a_page_alone_is_a_redirect_and_nothing_pending_is_none() -> None:
    pending = PaymentOutcome(status="pending", reference="r", authorization_url="https://x/pay")
    assert customer_action(pending) == {"type": "redirect", "url": "https://x/pay"}
    assert customer_action(PaymentOutcome(status="succeeded", reference="r")) is None
