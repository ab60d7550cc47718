"""Routing rules in the ledger and the worker (issue 37): versioned drafts, activation
reaching the worker, the decision each payment records, and soft-decline retries on the
next instance under a reference of their own; hard declines never retry."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from config.settings import get_settings
from providers.base import DeclineKind, OutcomeStatus
from providers.sandbox import SandboxProvider, charge_book
from registry.audit import AuditRecord
from registry.db import get_database
from registry.rules import RulesError
from registry.rulesets import (
    activate_ruleset,
    clear_rules,
    create_draft,
    get_ruleset,
    list_rulesets,
)
from tests.unit.test_processor import RecordingPublisher, recording_processor
from workers import runtime
from workers.payments.client import get_payment, request_payment
from workers.payments.processor import PaymentProcessor
from workers.payments.routing import explain, explain_payment, request_facts


@pytest.fixture
def processor(sqlite_url: str) -> tuple[PaymentProcessor, RecordingPublisher]:
    return recording_processor()


@pytest.fixture
def processor_any_db(database_url: str) -> tuple[PaymentProcessor, RecordingPublisher]:
    """As ``processor``, on SQLite and then PostgreSQL (the group-commit SQL of each)."""
    return recording_processor()


SOFT_AMOUNT = "77.00"  # 7700 kobo: declined softly by the first instance


def sandbox(book: str, name: str, priority: int, **config: Any) -> Any:
    return runtime.registry().create_instance(
        "sandbox",
        {"charge_book": book, **config},
        display_name=name,
        priority=priority,
        is_active=True,
    )


def pay(order: str, amount: str = "10.00", **given: Any) -> uuid.UUID:
    with_routing = {"billing_country": given.pop("billing_country", None)}
    receipt = request_payment(order, amount, "NGN", "ada@example.com", **given, **with_routing)
    return receipt.payment_id


def rules_for(*routes: tuple[str, list[dict[str, Any]], list[Any]], **extra: Any) -> dict[str, Any]:
    return {
        "rules": [
            {"name": name, "when": when, "route": [{"instance": str(v.id)} for v in targets]}
            for name, when, targets in routes
        ],
        **extra,
    }


def activate(document: dict[str, Any], tenant_id: str | None = None) -> Any:
    draft = create_draft(get_database(), document, tenant_id=tenant_id, actor="ops@example")
    active = activate_ruleset(get_database(), draft.id, actor="ops@example")
    runtime.registry().refresh(force=True)
    return active


# -- versions ---------------------------------------------------------------------------------


def test_a_ruleset_is_drafted_then_activated_each_step_audited(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = sandbox(str(tmp_path / "a.db"), "a", 1)
    document = rules_for(("kenya", [{"field": "billing_country", "op": "=", "value": "KE"}], [a]))
    first = create_draft(get_database(), document, actor="ops@example")
    assert first.status == "draft" and first.version == 1
    assert not runtime.registry().has_rules(None)  # a draft routes nothing
    second = create_draft(get_database(), document, actor="ops@example")
    assert second.version == 2
    activate_ruleset(get_database(), first.id, actor="ops@example")
    activate_ruleset(get_database(), second.id, actor="ops@example")
    assert get_ruleset(get_database(), first.id).status == "retired"
    assert [v.status for v in list_rulesets(get_database())] == ["active", "retired"]
    runtime.registry().refresh(force=True)
    assert runtime.registry().ruleset_for(None).version == 2  # type: ignore[union-attr]
    clear_rules(get_database(), actor="ops@example")
    runtime.registry().refresh(force=True)
    assert not runtime.registry().has_rules(None)
    with get_database().sessions() as session:
        actions = session.execute(select(AuditRecord.action).order_by(AuditRecord.id)).scalars()
        assert [x for x in actions if x.startswith("routing.")] == [
            "routing.draft", "routing.draft", "routing.activate", "routing.activate",
            "routing.clear",
        ]  # fmt: skip


def test_a_rule_may_not_name_an_instance_of_another_tenant(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    theirs = runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, tenant_id="t-b", is_active=True
    )
    document = rules_for(("x", [{"field": "currency", "op": "=", "value": "NGN"}], [theirs]))
    with pytest.raises(RulesError, match=r"no provider instance .* in this scope"):
        create_draft(get_database(), document, tenant_id="t-a")
    with pytest.raises(RulesError, match="in this scope"):
        create_draft(get_database(), document)  # the global ruleset: global instances only
    assert list_rulesets(get_database(), everything=True) == []


# -- the worker routes by the active version, and records why -------------------------------


def test_payments_route_by_the_active_rule_and_record_the_decision(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, publisher = processor
    a = sandbox(str(tmp_path / "a.db"), "a", 1)
    b = sandbox(str(tmp_path / "b.db"), "b", 2)
    active = activate(
        rules_for(("kenya", [{"field": "billing_country", "op": "=", "value": "KE"}], [b]))
    )
    kenyan, other = pay("o-ke", billing_country="KE"), pay("o-ng", billing_country="NG")
    for payment_id in (kenyan, other):
        proc.process(payment_id)
    assert get_payment(kenyan).instance_id == b.id
    assert get_payment(other).instance_id == a.id  # no rule: priority first
    with get_database().sessions() as session:
        from workers.ledger.records import Payment

        recorded = session.get(Payment, kenyan).route_decision  # type: ignore[union-attr]
    assert recorded == {
        "rule": "kenya",
        "ruleset_id": str(active.id),
        "ruleset_version": 1,
        "reason": "rule 'kenya' matched (ruleset v1)",
    }
    events = {p["payment_id"]: p for _, p in publisher.published}
    assert events[str(kenyan)]["route"]["rule"] == "kenya"
    assert events[str(other)]["route"]["rule"] is None
    # explain on the payment: the same decision, and the instance it left out
    told = explain_payment(runtime.registry(), kenyan)
    assert told.recorded == recorded and [r.display_name for r in told.route] == ["b"]
    assert [(x.display_name, x.reason) for x in told.left_out] == [("a", "not in rule 'kenya'")]


def test_a_draft_is_tried_before_it_is_activated(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = sandbox(str(tmp_path / "a.db"), "a", 1)
    b = sandbox(str(tmp_path / "b.db"), "b", 2)
    draft = create_draft(
        get_database(),
        rules_for(("big", [{"field": "amount", "op": ">", "value": "500"}], [b])),
    )
    big = request_facts(amount="500.01", currency="NGN")
    tried = explain(runtime.registry(), big, tenant_id=None, ruleset_id=draft.id)
    assert tried.rule == "big" and [r.instance_id for r in tried.route] == [b.id]
    now = explain(runtime.registry(), big, tenant_id=None)
    assert now.rule is None and [r.instance_id for r in now.route] == [a.id, b.id]


# -- soft declines ---------------------------------------------------------------------------


def two_books(tmp_path) -> tuple[str, str, Any, Any]:  # type: ignore[no-untyped-def]
    first_book, second_book = str(tmp_path / "first.db"), str(tmp_path / "second.db")
    first = sandbox(first_book, "first", 1, soft_decline_amounts_minor=[7700])
    second = sandbox(second_book, "second", 2)
    return first_book, second_book, first, second


def test_a_soft_decline_is_retried_once_on_the_next_instance_under_its_own_reference(
    processor_any_db, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    proc, publisher = processor_any_db
    first_book, second_book, first, second = two_books(tmp_path)
    activate({"rules": [], "retry_soft_declines": True})
    payment_id = pay("o-soft", SOFT_AMOUNT)
    reference = get_payment(payment_id).provider_reference
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "succeeded" and view.instance_id == second.id
    assert view.provider_reference == f"{reference}-r2"
    assert [(a.instance_id, a.outcome, a.error_code) for a in view.attempts] == [
        (first.id, "failed", "try_again_later"),
        (second.id, "succeeded", None),
    ]
    # each provider saw its own reference: the first declined one, the second charged one
    assert charge_book(first_book).references(OutcomeStatus.SUCCEEDED) == []
    assert charge_book(second_book).references(OutcomeStatus.SUCCEEDED) == [f"{reference}-r2"]
    (event,) = [p for t, p in publisher.published if t == "payment.succeeded"]
    assert event["provider_reference"] == f"{reference}-r2"
    assert [(a["reference"], a["outcome"]) for a in event["attempts"]] == [
        (reference, "failed"),
        (f"{reference}-r2", "succeeded"),
    ]
    # the same request again is the same payment (its key, not its provider reference)
    again = request_payment("o-soft", SOFT_AMOUNT, "NGN", "ada@example.com")
    assert again.payment_id == payment_id and not again.created


@pytest.mark.parametrize("code", sorted(SandboxProvider.decline_codes))
def test_a_hard_decline_never_gets_a_second_attempt(processor, tmp_path, code: str) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    kind = SandboxProvider.decline_kind(code)
    first_book = str(tmp_path / "first.db")
    if code == "declined":
        sandbox(first_book, "first", 1, decline_amounts_minor=[7700])
    else:
        sandbox(first_book, "first", 1, soft_decline_amounts_minor=[7700], soft_decline_code=code)
    second = sandbox(str(tmp_path / "second.db"), "second", 2)
    activate({"rules": [], "retry_soft_declines": True})
    payment_id = pay("o-1", SOFT_AMOUNT)
    proc.process(payment_id)
    view = get_payment(payment_id)
    charges = [a for a in view.attempts if a.operation == "charge"]
    if kind is DeclineKind.HARD:
        assert len(charges) == 1 and view.status == "failed" and view.error_code == code
    else:
        assert len(charges) == 2 and view.instance_id == second.id


def test_retries_are_off_unless_switched_on(processor, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    two_books(tmp_path)
    off = pay("o-off", SOFT_AMOUNT)
    proc.process(off)
    assert get_payment(off).status == "failed" and len(get_payment(off).attempts) == 1
    # switched on in config for this tenant only ("_platform": payments without one)
    monkeypatch.setenv("TENDER_RETRY_SOFT_DECLINES", '["_platform"]')
    get_settings.cache_clear()
    proc.settings = get_settings()
    on = pay("o-on", SOFT_AMOUNT)
    proc.process(on)
    assert get_payment(on).status == "succeeded" and len(get_payment(on).attempts) == 2


def test_a_payment_bound_to_one_provider_is_never_retried_elsewhere(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    two_books(tmp_path)
    activate({"rules": [], "retry_soft_declines": True})
    # a provider's own saved authorization means nothing to another provider
    bound = pay("o-token", SOFT_AMOUNT, payment_token="AUTH_first_only")
    proc.process(bound)
    view = get_payment(bound)
    assert view.status == "failed" and len(view.attempts) == 1


def test_a_retry_with_nowhere_to_go_fails_with_the_decline(processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, _ = processor
    sandbox(str(tmp_path / "only.db"), "only", 1, soft_decline_amounts_minor=[7700])
    activate({"rules": [], "retry_soft_declines": True})
    payment_id = pay("o-alone", SOFT_AMOUNT)
    proc.process(payment_id)
    view = get_payment(payment_id)
    assert view.status == "failed" and view.error_code == "try_again_later"
    assert len(view.attempts) == 1


def test_every_plugin_has_a_decline_table_citing_its_source() -> None:
    from registry.catalogue import catalogue

    for name in ("sandbox", "stripe", "paystack", "flutterwave", "paypal"):
        table = catalogue.get(name).decline_codes
        assert table, name
        for code, decline in table.items():
            assert decline.kind in DeclineKind, (name, code)
            assert decline.source.startswith(("https://", "providers/")), (name, code)
    # an unknown code is hard: never retried
    assert SandboxProvider.decline_kind("something_new") is DeclineKind.HARD
    assert SandboxProvider.decline_kind(None) is DeclineKind.HARD


def test_workers_follow_an_activation_within_the_hot_swap_bound(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Activation bumps the registry generation with the ruleset: a process polling every
    0.25 s routes by it within two polls, without being told."""
    import time

    from registry.service import PluginRegistry

    worker_view = PluginRegistry(get_database(), poll_s=0.25)
    a = sandbox(str(tmp_path / "a.db"), "a", 1)
    assert not worker_view.has_rules(None)
    document = rules_for(("kenya", [{"field": "billing_country", "op": "=", "value": "KE"}], [a]))
    draft = create_draft(get_database(), document)
    activate_ruleset(get_database(), draft.id)
    activated_at = time.monotonic()
    while not worker_view.has_rules(None):
        assert time.monotonic() - activated_at < 1.0, "not followed within a second"
        time.sleep(0.01)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    code=st.sampled_from(sorted(SandboxProvider.decline_codes)),
    retries_on=st.booleans(),
    instances=st.integers(1, 3),
)
def test_property_a_payment_is_charged_at_most_once_and_only_soft_declines_retry(
    processor, tmp_path, code: str, retries_on: bool, instances: int
) -> None:  # type: ignore[no-untyped-def]
    """For any decline code, switch and route length: at most one charge took money, a
    second attempt only for a soft or outage code with retries on and somewhere to go."""
    import random as stdlib_random

    stdlib_random.seed(uuid.uuid4().int)  # the ledger's ids: hypothesis seeds the global one
    proc, _ = processor
    from registry.rulesets import clear_rules

    for view in runtime.registry().list_instances():
        runtime.registry().retire(view.id)
    clear_rules(get_database())
    book = str(tmp_path / f"{uuid.uuid4().hex}.db")
    declining = {"decline_amounts_minor": [7700]} if code == "declined" else {
        "soft_decline_amounts_minor": [7700], "soft_decline_code": code,
    }  # fmt: skip
    sandbox(book, "first", 1, **declining)
    for n in range(1, instances):
        sandbox(book, f"next-{n}", 1 + n)
    if retries_on:
        activate({"rules": [], "retry_soft_declines": True})
    runtime.registry().refresh(force=True)  # this example's instances and rules, not the last's
    payment_id = pay(f"o-{uuid.uuid4().hex[:12]}", SOFT_AMOUNT)
    proc.process(payment_id)
    view = get_payment(payment_id)
    charges = [a for a in view.attempts if a.operation == "charge"]
    soft = SandboxProvider.decline_kind(code) is not DeclineKind.HARD
    assert len(charges) == (2 if soft and retries_on and instances > 1 else 1)
    assert charge_book(book).count(OutcomeStatus.SUCCEEDED) == (1 if len(charges) == 2 else 0)
