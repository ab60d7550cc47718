"""Provider webhooks on SQLite: signatures over the raw body, dedupe by receipt, the charge
and refund transitions they may cause, and the ones they must refuse."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from providers.base import derive_reference
from providers.errors import WebhookPayloadError, WebhookSignatureError
from registry.db import get_database
from registry.instances import InstanceView
from tests.fakes.paystack import sign
from tests.fakes.paystack.server import refund_event_data
from workers import runtime
from workers.ledger.outbox import OutboxEvent
from workers.ledger.records import Payment, Refund, WebhookReceipt
from workers.payments.refunds import RefundState
from workers.payments.webhooks import WebhookPluginNotFound, WebhookReply, receive_webhook

AMOUNT = 500_000  # minor units: NGN 5,000.00


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)


@pytest.fixture
def env(sqlite_url: str) -> Iterator[str]:
    runtime.reset()
    yield sqlite_url
    runtime.reset()


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


def secret() -> str:
    return f"sk_test_{uuid.uuid4().hex}"


def paystack_instance(key: str, *, tenant: str | None = None, active: bool = True) -> InstanceView:
    return runtime.registry().create_instance(
        "paystack",
        {"secret_key": key, "public_key": "pk_test_x", "base_url": "http://127.0.0.1:9"},
        tenant_id=tenant,
        is_active=active,
    )


def payment(
    instance: InstanceView | None, *, status: str = "pending", amount_minor: int = AMOUNT
) -> Payment:
    key = uuid.uuid4().hex
    row = Payment(
        id=uuid.uuid4(),
        tenant_id=instance.tenant_id if instance else None,
        order_id=f"ord-{key[:6]}",
        idempotency_key=key,
        reference=derive_reference(key),
        amount_minor=amount_minor,
        currency="NGN",
        customer_email="ada@example.com",
        status=status,
        instance_id=instance.id if instance else None,
        plugin_name="paystack" if instance else None,
        metadata_={},
    )
    with get_database().transaction() as session:
        session.add(row)
    return row


def charge_body(pay: Payment, event: str = "charge.success", **changes: Any) -> bytes:
    data = {
        "id": 4099260516,
        "reference": pay.reference,
        "amount": pay.amount_minor,
        "currency": pay.currency,
        "status": "success" if event == "charge.success" else "failed",
        "gateway_response": "Successful" if event == "charge.success" else "Declined",
        **changes,
    }
    return json.dumps({"event": event, "data": data}, separators=(",", ":")).encode()


def refund_body(pay: Payment, status: str, amount_minor: int) -> bytes:
    """A refund event as Paystack sends it: its own published sample (no refund id, the
    amount a string), for this payment."""
    data = refund_event_data(
        f"refund.{status}",
        reference=pay.reference,
        amount=amount_minor,
        currency=pay.currency,
        refund_reference=f"RF-{uuid.uuid4().hex[:8]}",
    )
    return json.dumps({"event": f"refund.{status}", "data": data}).encode()


def deliver(
    body: bytes, key: str | None, publisher: RecordingPublisher, **headers: str
) -> WebhookReply:
    sent = {"content-type": "application/json", **headers}
    if key is not None:
        sent["x-paystack-signature"] = sign(key, body)
    return receive_webhook("paystack", body, sent, publisher=publisher)  # type: ignore[arg-type]


def status_of(pay: Payment) -> str:
    with get_database().sessions() as session:
        row = session.get(Payment, pay.id)
        assert row is not None
        return row.status


def outbox_types() -> list[str]:
    with get_database().sessions() as session:
        return list(
            session.execute(select(OutboxEvent.event_type).order_by(OutboxEvent.id)).scalars()
        )


def receipts() -> list[tuple[str, str]]:
    with get_database().sessions() as session:
        rows = session.execute(
            select(WebhookReceipt.event_type, WebhookReceipt.result).order_by(WebhookReceipt.id)
        )
        return [(r.event_type, r.result) for r in rows]


# --- charges --------------------------------------------------------------------------


def test_signed_success_settles_a_pending_payment_once(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key))

    reply = deliver(charge_body(pay), key, publisher)

    assert (reply.result, reply.http_status, reply.payment_id) == ("applied", 200, pay.id)
    assert status_of(pay) == "succeeded"
    assert outbox_types() == ["payment.succeeded"]
    assert [payload["payment_id"] for _, payload in publisher.published] == [str(pay.id)]
    assert receipts() == [("charge.success", "applied")]


def test_redelivered_webhook_changes_nothing(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key))
    body = charge_body(pay)
    deliver(body, key, publisher)

    again = deliver(body, key, publisher)

    assert (again.result, again.http_status) == ("duplicate", 200)
    assert outbox_types() == ["payment.succeeded"] and len(publisher.published) == 1
    assert receipts() == [("charge.success", "applied")]


@pytest.mark.parametrize(
    "signature",
    [None, "", "0" * 128, "not-hex", "FORGED"],
    ids=["missing", "empty", "zeros", "junk", "forged"],
)
def test_bad_or_missing_signature_is_refused_and_writes_nothing(
    env, publisher, signature: str | None
) -> None:
    key = secret()
    pay = payment(paystack_instance(key))
    body = charge_body(pay)
    headers = {} if signature is None else {"x-paystack-signature": signature}

    with pytest.raises(WebhookSignatureError):
        receive_webhook("paystack", body, headers, publisher=publisher)  # type: ignore[arg-type]

    assert status_of(pay) == "pending" and outbox_types() == [] and receipts() == []


def test_body_changed_after_signing_is_refused(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key))
    body = charge_body(pay)
    tampered = body.replace(b'"amount":500000', b'"amount":1')
    headers = {"x-paystack-signature": sign(key, body)}

    with pytest.raises(WebhookSignatureError):
        receive_webhook("paystack", tampered, headers, publisher=publisher)  # type: ignore[arg-type]
    assert status_of(pay) == "pending" and receipts() == []


def test_signed_with_another_tenants_key_cannot_move_the_payment(env, publisher) -> None:
    ours, theirs = secret(), secret()
    pay = payment(paystack_instance(ours, tenant="shop-a"))
    paystack_instance(theirs, tenant="shop-b")

    with pytest.raises(WebhookSignatureError, match="another paystack instance"):
        deliver(charge_body(pay), theirs, publisher)
    assert status_of(pay) == "pending" and receipts() == []

    assert deliver(charge_body(pay), ours, publisher).result == "applied"


def test_any_instance_of_the_plugin_may_verify_switched_on_or_not(env, publisher) -> None:
    paystack_instance(secret(), active=True)
    key = secret()
    pay = payment(paystack_instance(key, active=False))

    assert deliver(charge_body(pay), key, publisher).result == "applied"


def test_unknown_plugin_and_plugin_without_instances_are_not_found(env, publisher) -> None:
    with pytest.raises(WebhookPluginNotFound, match="no plugin named 'stripe2'"):
        receive_webhook("stripe2", b"{}", {}, publisher=publisher)  # type: ignore[arg-type]
    with pytest.raises(WebhookPluginNotFound, match="no paystack instance"):
        receive_webhook("paystack", b"{}", {}, publisher=publisher)  # type: ignore[arg-type]


def test_signed_but_unreadable_body_is_a_payload_error(env, publisher) -> None:
    key = secret()
    paystack_instance(key)
    with pytest.raises(WebhookPayloadError):
        deliver(b'{"event": "charge.success"}', key, publisher)
    assert receipts() == []


def test_unknown_reference_is_acknowledged_and_recorded(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key))
    body = charge_body(pay, reference="tdr-nobody-knows-this")

    reply = deliver(body, key, publisher)

    assert (reply.result, reply.http_status) == ("unknown_reference", 200)
    assert status_of(pay) == "pending" and outbox_types() == []
    assert receipts() == [("charge.success", "unknown_reference")]


@pytest.mark.parametrize(
    "changes", [{"amount": AMOUNT - 1}, {"currency": "GHS"}, {"amount": None}], ids=str
)
def test_success_that_disagrees_with_the_ledger_is_not_applied_and_alerts(
    env, publisher, changes: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    key = secret()
    pay = payment(paystack_instance(key))

    reply = deliver(charge_body(pay, **changes), key, publisher)

    assert (reply.result, reply.http_status) == ("mismatch", 200)
    assert status_of(pay) == "pending"
    assert outbox_types() == ["alert.raised"]
    assert receipts() == [("charge.success", "mismatch")]
    assert any(r.levelname == "ERROR" and "mismatch" in r.getMessage() for r in caplog.records)


def test_failure_webhook_fails_a_pending_payment_with_the_reason(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key))

    assert deliver(charge_body(pay, "charge.failed"), key, publisher).result == "applied"

    assert status_of(pay) == "failed"
    assert outbox_types() == ["payment.failed"]
    assert publisher.published[0][1]["error"] == "Declined"


def test_unknown_payment_is_settled_by_webhook(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="unknown")
    assert deliver(charge_body(pay), key, publisher).result == "applied"
    assert status_of(pay) == "succeeded"


def test_success_already_recorded_by_the_worker_is_no_change(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    assert deliver(charge_body(pay), key, publisher).result == "no_change"
    assert outbox_types() == [] and receipts() == [("charge.success", "no_change")]


def test_a_success_reported_after_a_failure_wins_with_an_alert(env, publisher) -> None:
    """Money at the provider is the truth (issue 33): a payment Tender failed (an expired
    checkout, a decline the customer retried past) that the provider reports paid becomes
    succeeded, and billing is told what it left."""
    key = secret()
    pay = payment(paystack_instance(key), status="failed")
    assert deliver(charge_body(pay), key, publisher).result == "applied"
    assert status_of(pay) == "succeeded"
    assert outbox_types() == ["payment.succeeded", "alert.raised"]
    event = next(p for t, p in publisher.published if t == "payment.succeeded")
    assert event["previous_status"] == "failed" and event["error"] is None


def test_a_failure_for_a_succeeded_payment_is_a_conflict_that_alerts(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    reply = deliver(charge_body(pay, "charge.failed"), key, publisher)
    assert reply.result == "conflict"
    assert status_of(pay) == "succeeded" and outbox_types() == ["alert.raised"]


def test_payment_still_processing_is_answered_409_so_the_provider_retries(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="processing")
    body = charge_body(pay)

    reply = deliver(body, key, publisher)
    assert (reply.result, reply.http_status) == ("in_progress", 409)
    assert receipts() == [] and outbox_types() == []

    with get_database().transaction() as session:
        row = session.get(Payment, pay.id)
        assert row is not None
        row.status = "pending"  # the worker finished: initialized, awaiting the customer
    assert deliver(body, key, publisher).result == "applied"
    assert status_of(pay) == "succeeded"


def test_events_tender_does_not_act_on_are_acknowledged(env, publisher) -> None:
    key = secret()
    paystack_instance(key)
    body = json.dumps({"event": "transfer.success", "data": {"id": 7, "reference": "x"}}).encode()
    assert deliver(body, key, publisher).result == "ignored"
    assert receipts() == [("transfer.success", "ignored")]


# --- refunds --------------------------------------------------------------------------


def refund_row(pay: Payment, amount_minor: int, *, status: str, provider_id: str | None) -> Refund:
    row = Refund(
        id=uuid.uuid4(),
        payment_id=pay.id,
        amount_minor=amount_minor,
        status=status,
        provider_refund_id=provider_id,
    )
    with get_database().transaction() as session:
        session.add(row)
    return row


def refund_state(row: Refund) -> tuple[str, str | None]:
    with get_database().sessions() as session:
        found = session.get(Refund, row.id)
        assert found is not None
        return found.status, found.provider_refund_id


def refunded(pay: Payment) -> tuple[str, int]:
    with get_database().sessions() as session:
        row = session.get(Payment, pay.id)
        assert row is not None
        return row.status, row.refunded_minor


def test_refund_processed_settles_the_pending_refund_and_the_payment(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    first = refund_row(pay, 100_000, status="pending", provider_id="901")

    reply = deliver(refund_body(pay, "processed", 100_000), key, publisher)

    assert reply.result == "applied"
    assert refund_state(first) == (RefundState.SUCCEEDED, "901")
    assert refunded(pay) == ("partially_refunded", 100_000)
    assert outbox_types() == ["payment.refunded"]
    event = publisher.published[0][1]
    assert event["status"] == "partially_refunded" and event["refunded_minor"] == 100_000

    rest = refund_row(pay, AMOUNT - 100_000, status="pending", provider_id="902")
    body = refund_body(pay, "processed", AMOUNT - 100_000)
    deliver(body, key, publisher)
    assert refund_state(rest)[0] == RefundState.SUCCEEDED
    assert refunded(pay) == ("refunded", AMOUNT)

    replay = deliver(body, key, publisher)  # Paystack's redelivery: the same bytes
    assert replay.result == "duplicate" and refunded(pay) == ("refunded", AMOUNT)
    assert outbox_types() == ["payment.refunded", "payment.refunded"]


def test_refund_failed_releases_the_refund_and_leaves_the_payment(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    row = refund_row(pay, AMOUNT, status="pending", provider_id="903")

    assert deliver(refund_body(pay, "failed", AMOUNT), key, publisher).result == "applied"

    assert refund_state(row)[0] == RefundState.FAILED
    assert refunded(pay) == ("succeeded", 0) and outbox_types() == ["refund.failed"]
    event = publisher.published[0][1]
    assert event["refund_id"] == str(row.id) and event["refund_amount_minor"] == AMOUNT


def test_a_refund_that_fails_after_it_succeeded_is_taken_back_with_an_alert(env, publisher) -> None:
    """Paystack sends ``refund.failed`` (Stripe documents the same after success: the money
    goes back to the merchant): the ledger said refunded and the customer got nothing. The
    refund is failed, its amount refundable again, billing told and an operator alerted."""
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    row = refund_row(pay, 100_000, status="pending", provider_id="1190")
    deliver(refund_body(pay, "processed", 100_000), key, publisher)
    assert refunded(pay) == ("partially_refunded", 100_000)

    reply = deliver(refund_body(pay, "failed", 100_000), key, publisher)

    assert reply.result == "applied"
    assert refund_state(row)[0] == RefundState.FAILED
    assert refunded(pay) == ("succeeded", 0)
    assert outbox_types() == ["payment.refunded", "refund.failed", "alert.raised"]
    failed = next(p for t, p in publisher.published if t == "refund.failed")
    assert failed["status"] == "succeeded" and failed["refunded_minor"] == 0


def test_refund_webhook_before_our_call_returns_adopts_the_open_refund(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    in_flight = refund_row(pay, 20_000, status="requested", provider_id=None)

    deliver(refund_body(pay, "processed", 20_000), key, publisher)

    assert refund_state(in_flight) == (RefundState.SUCCEEDED, None)  # Paystack names none
    assert refunded(pay) == ("partially_refunded", 20_000)


def test_refund_made_in_the_dashboard_is_recorded(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")

    deliver(refund_body(pay, "pending", 30_000), key, publisher)
    deliver(refund_body(pay, "processed", 30_000), key, publisher)

    assert refunded(pay) == ("partially_refunded", 30_000)
    with get_database().sessions() as session:
        count = session.execute(select(func.count()).select_from(Refund)).scalar_one()
    assert count == 1


def test_refund_larger_than_what_is_left_is_a_mismatch(env, publisher) -> None:
    key = secret()
    pay = payment(paystack_instance(key), status="succeeded")
    reply = deliver(refund_body(pay, "processed", AMOUNT + 1), key, publisher)
    assert reply.result == "mismatch"
    assert refunded(pay) == ("succeeded", 0) and outbox_types() == ["alert.raised"]


# --- the route ------------------------------------------------------------------------


@pytest.fixture
def client(env: str) -> Iterator[TestClient]:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    reconfigure()  # the embedded broker under this test's data dir
    with TestClient(create_app()) as test_client:
        yield test_client


def test_route_answers_401_404_400_and_200(client: TestClient) -> None:
    key = secret()
    pay = payment(paystack_instance(key))
    body = charge_body(pay)

    assert client.post("/webhooks/paystack", content=body).status_code == 401
    forged = {"x-paystack-signature": sign(secret(), body)}
    assert client.post("/webhooks/paystack", content=body, headers=forged).status_code == 401
    assert client.post("/webhooks/nope", content=body).status_code == 404
    unreadable = b"[1, 2]"
    signed = {"x-paystack-signature": sign(key, unreadable)}
    assert client.post("/webhooks/paystack", content=unreadable, headers=signed).status_code == 400
    assert status_of(pay) == "pending" and receipts() == []

    good = {"x-paystack-signature": sign(key, body), "content-type": "application/json"}
    answer = client.post("/webhooks/paystack", content=body, headers=good)
    assert answer.status_code == 200
    assert answer.json() == {"result": "applied", "detail": "succeeded", "payment_id": str(pay.id)}
    assert client.post("/webhooks/paystack", content=body, headers=good).json()["result"] == (
        "duplicate"
    )
