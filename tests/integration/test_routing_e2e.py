"""Routing rules, soft-decline retries and success-rate routing through the real worker,
Redis and PostgreSQL (issues 37 and 38): the worker follows an activation it was never
told about, records the decision each payment was routed by, and publishes it."""

from __future__ import annotations

import time
from typing import Any

from providers.sandbox import charge_book
from registry.db import get_database
from registry.rulesets import activate_ruleset, create_draft
from tests.integration.conftest import wait_for
from tests.integration.test_payment_path import sandbox, settled
from workers.payments.client import get_payment, request_payment


def test_the_worker_routes_by_an_activated_rule_and_retries_a_soft_decline(  # type: ignore[no-untyped-def]
    worker, tenant, book_path, events
) -> None:
    first = sandbox(tenant, book_path, name="first", priority=1, soft_decline_amounts_minor=[7700])
    second = sandbox(tenant, book_path, name="second", priority=2)
    kenya = {"field": "billing_country", "op": "=", "value": "KE"}
    rules: dict[str, Any] = {
        "rules": [{"name": "kenya", "when": [kenya], "route": [{"instance": str(second.id)}]}],
        "retry_soft_declines": True,
    }
    draft = create_draft(get_database(), rules, tenant_id=tenant, actor="e2e")
    activate_ruleset(get_database(), draft.id, actor="e2e")
    time.sleep(0.6)  # the worker's registry polls every 0.25 s: it follows without a word

    def pay(order: str, amount: str, **facts: Any) -> Any:
        return request_payment(
            order, amount, "NGN", "ada@example.com", tenant_id=tenant,
            idempotency_key=f"{tenant}-{order}", **facts,
        ).payment_id  # fmt: skip

    kenyan = pay("ke", "10.00", billing_country="KE")
    soft = pay("soft", "77.00", billing_country="NG")
    kenyan_view, soft_view = wait_for(lambda: settled(kenyan)), wait_for(lambda: settled(soft))
    assert kenyan_view.instance_id == second.id
    assert kenyan_view.route["rule"] == "kenya" and kenyan_view.route["ruleset_version"] == 1
    # no rule for NG: the first instance declined softly, the second charged under -r2
    assert soft_view.status.value == "succeeded" and soft_view.instance_id == second.id
    reference = soft_view.provider_reference
    assert reference.endswith("-r2")
    assert [(a.instance_id, a.outcome, a.reference) for a in soft_view.attempts] == [
        (first.id, "failed", reference.removesuffix("-r2")),
        (second.id, "succeeded", reference),
    ]
    assert charge_book(book_path).count() == 3  # one decline and two charges, none twice
    seen = events.collect(
        lambda got: {e.get("payment_id") for e in got} >= {str(kenyan), str(soft)}, timeout_s=30
    )
    by_payment = {e["payment_id"]: e for e in seen if e["type"] == "payment.succeeded"}
    assert by_payment[str(kenyan)]["route"]["rule"] == "kenya"
    assert [a["outcome"] for a in by_payment[str(soft)]["attempts"]] == ["failed", "succeeded"]
    assert get_payment(soft).provider_reference == reference


def test_the_worker_routes_by_success_rate_on_shared_outcomes(worker, tenant, book_path) -> None:  # type: ignore[no-untyped-def]
    good = sandbox(tenant, book_path, name="good")
    poor = sandbox(tenant, book_path, name="poor", decline_amounts_minor=[1500])
    both = [{"instance": str(good.id)}, {"instance": str(poor.id)}]
    warm_up = {"field": "amount", "op": "=", "value": "15.00"}
    rules = {
        "rules": [
            # warm-up payments of 15.00 go to both by priority; "poor" declines them all
            {"name": "warm-up", "when": [warm_up], "route": both},
            {
                "name": "by-success", "when": [{"field": "amount", "op": ">", "value": "0"}],
                "route": both, "mode": "success_rate", "exploration": 0,
            },
        ]
    }  # fmt: skip
    activate_ruleset(get_database(), create_draft(get_database(), rules, tenant_id=tenant).id)
    time.sleep(0.6)
    warm = [
        request_payment(
            f"warm-{n}", "15.00", "NGN", "ada@example.com", tenant_id=tenant,
            idempotency_key=f"{tenant}-warm-{n}",
        ).payment_id
        for n in range(40)
    ]  # fmt: skip
    for payment_id in warm:
        wait_for(lambda p=payment_id: settled(p))
    time.sleep(6)  # the workers read the outcome window every TENDER_ROUTING_STATS_S (5 s)
    later = [
        request_payment(
            f"later-{n}", "20.00", "NGN", "ada@example.com", tenant_id=tenant,
            idempotency_key=f"{tenant}-later-{n}",
        ).payment_id
        for n in range(20)
    ]  # fmt: skip
    views = [wait_for(lambda p=payment_id: settled(p)) for payment_id in later]
    assert sum(v.instance_id == good.id for v in views) >= 18
    assert "by recent success rate" in views[-1].route["reason"]
