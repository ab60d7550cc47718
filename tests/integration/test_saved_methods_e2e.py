"""Saved payment methods through the real worker, Redis and PostgreSQL (issue 35): 200
charges of methods issued by one of two accounts that share the tenant's traffic 50/50
all go to their issuer; other payments of the tenant split; the token never shows."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from registry.db import get_database
from tests.integration.conftest import wait_for
from tests.integration.test_payment_path import sandbox
from workers.ledger.outbox import OutboxEvent
from workers.ledger.records import Payment, PaymentAttempt
from workers.payments.client import request_payment
from workers.payments.methods import import_payment_method

CANARY = "AUTH_e2e_canary_9f2b7c"


def test_two_hundred_saved_method_charges_all_go_to_their_issuer(worker, tenant, book_path) -> None:  # type: ignore[no-untyped-def]
    issuer = sandbox(tenant, book_path, name="issuer")
    other = sandbox(tenant, book_path, name="other")  # same priority and weight: 50/50
    methods = [import_payment_method(issuer.id, f"{CANARY}-{n}", f"cust-{n}").id for n in range(20)]
    saved = [
        request_payment(
            f"renewal-{n}", "12.00", "NGN", "ada@example.com", tenant_id=tenant,
            idempotency_key=f"{tenant}-renewal-{n}", payment_method_id=methods[n % 20],
        ).payment_id
        for n in range(200)
    ]  # fmt: skip
    plain = [
        request_payment(
            f"plain-{n}", "12.00", "NGN", "ada@example.com", tenant_id=tenant,
            idempotency_key=f"{tenant}-plain-{n}",
        ).payment_id
        for n in range(40)
    ]  # fmt: skip

    def settled_count() -> bool:
        with get_database().sessions() as session:
            done = session.execute(
                select(func.count())
                .select_from(Payment)
                .where(Payment.id.in_(saved + plain), Payment.status == "succeeded")
            ).scalar_one()
        return done == len(saved) + len(plain)

    wait_for(settled_count, timeout_s=120)
    with get_database().sessions() as session:
        charged_by = session.execute(
            select(Payment.instance_id, func.count())
            .where(Payment.id.in_(saved))
            .group_by(Payment.instance_id)
        ).all()
        tried = set(
            session.execute(
                select(PaymentAttempt.instance_id).where(PaymentAttempt.payment_id.in_(saved))
            ).scalars()
        )
        split = set(
            session.execute(select(Payment.instance_id).where(Payment.id.in_(plain))).scalars()
        )
        events = (
            session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.event_type == "payment.succeeded")
            )
            .scalars()
            .all()
        )
    assert dict(charged_by) == {issuer.id: 200}
    assert tried == {issuer.id}
    assert split == {issuer.id, other.id}  # the same tenant's other payments do split
    assert CANARY not in json.dumps(events)
