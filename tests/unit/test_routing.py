"""Routing: a pure function of (instances, request) -> ordered route. No database here."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from typing import Any

import pytest

from providers.base import utcnow
from registry.instances import InstanceView
from registry.routing import resolve_route

SUPPORTED = {"sandbox": {"NGN", "USD", "KES"}, "naira_only": {"NGN"}}


def supports(plugin_name: str, currency: str) -> bool:
    return currency in SUPPORTED.get(plugin_name, set())


def instance(name: str = "sandbox", **overrides: Any) -> InstanceView:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": None,
        "plugin_name": "sandbox",
        "display_name": name,
        "provider_type": "payment",
        "status": "active",
        "status_message": None,
        "is_active": True,
        "config": {},
        "priority": 100,
        "weight": 1,
        "currencies": [],
        "health": "healthy",
        "health_since": None,
        "health_message": None,
        "health_latency_ms": None,
        "consecutive_failures": 0,
        "last_checked_at": None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    fields.update(overrides)
    return InstanceView(**fields)


def route(
    instances: list[InstanceView],
    *,
    tenant_id: str | None = None,
    currency: str = "NGN",
    key: str = "order-1",
    provider_type: str = "payment",
) -> list[str]:
    return [
        i.display_name
        for i in resolve_route(
            instances,
            tenant_id=tenant_id,
            currency=currency,
            idempotency_key=key,
            supports=supports,
            provider_type=provider_type,
        )
    ]


def test_lower_priority_routes_first_and_the_rest_are_fallbacks() -> None:
    instances = [
        instance("backup", priority=20),
        instance("primary", priority=10),
        instance("last", priority=30),
    ]
    assert route(instances) == ["primary", "backup", "last"]


def test_no_usable_instance_is_an_empty_route() -> None:
    assert route([]) == []
    assert route([instance("off", is_active=False)]) == []


@pytest.mark.parametrize(
    ("overrides", "routed"),
    [
        ({"is_active": False}, False),
        ({"status": "error"}, False),
        ({"status": "error", "is_active": True}, False),
        ({"health": "unhealthy"}, False),  # circuit open
        ({"health": "degraded"}, True),
        ({"health": "unknown"}, True),  # never checked yet
    ],
)
def test_inactive_error_and_unhealthy_instances_are_skipped(
    overrides: dict[str, Any], routed: bool
) -> None:
    instances = [instance("candidate", priority=1, **overrides), instance("other", priority=2)]
    expected = ["candidate", "other"] if routed else ["other"]
    assert route(instances) == expected


def test_currency_filter_uses_the_instance_list_then_the_plugin() -> None:
    instances = [
        instance("ngn-only", priority=1, currencies=["NGN"]),
        instance("naira-plugin", priority=2, plugin_name="naira_only"),
        instance("anything", priority=3),
    ]
    assert route(instances, currency="NGN") == ["ngn-only", "naira-plugin", "anything"]
    assert route(instances, currency="USD") == ["anything"]
    assert route(instances, currency="JPY") == []  # sandbox here does not support JPY


def test_an_unknown_plugin_is_never_routed() -> None:
    assert route([instance("ghost", plugin_name="uninstalled")]) == []


def test_only_instances_of_the_requested_provider_type_are_routed() -> None:
    instances = [instance("pay"), instance("payout", provider_type="payout")]
    assert route(instances) == ["pay"]
    assert route(instances, provider_type="payout") == ["payout"]


def test_a_tenant_with_its_own_instances_is_routed_only_through_them() -> None:
    instances = [
        instance("global", priority=1),
        instance("acme-own", tenant_id="acme", priority=50),
        instance("other-tenant", tenant_id="globex", priority=1),
    ]
    assert route(instances, tenant_id="acme") == ["acme-own"]
    assert route(instances, tenant_id="initech") == ["global"]
    assert route(instances, tenant_id=None) == ["global"]


def test_a_tenant_whose_own_instances_are_all_down_does_not_fall_back_to_global_keys() -> None:
    instances = [instance("global"), instance("acme-own", tenant_id="acme", status="error")]
    assert route(instances, tenant_id="acme") == []


def test_a_tenant_scope_is_per_provider_type() -> None:
    instances = [
        instance("global-pay"),
        instance("acme-payout", tenant_id="acme", provider_type="payout"),
    ]
    assert route(instances, tenant_id="acme") == ["global-pay"]


def test_route_is_deterministic_per_idempotency_key() -> None:
    instances = [instance(f"equal-{n}") for n in range(5)]
    first = route(instances, key="order-42")
    assert sorted(first) == sorted(i.display_name for i in instances)
    for _ in range(5):
        shuffled = random.sample(instances, len(instances))
        assert route(shuffled, key="order-42") == first


def test_equal_priority_instances_share_payments_across_keys() -> None:
    instances = [instance("a"), instance("b")]
    primaries = {route(instances, key=f"order-{n}")[0] for n in range(50)}
    assert primaries == {"a", "b"}


def test_weights_spread_payments_roughly_in_proportion() -> None:
    instances = [
        instance("heavy", weight=3),
        instance("light", weight=1),
        instance("x", priority=200),
    ]
    keys = 4000
    primaries = Counter(route(instances, key=f"order-{n}")[0] for n in range(keys))
    assert set(primaries) == {"heavy", "light"}  # priority still wins over weight
    assert primaries["heavy"] / keys == pytest.approx(0.75, abs=0.04)


def test_weights_spread_over_three_instances() -> None:
    instances = [instance("w1", weight=1), instance("w2", weight=2), instance("w5", weight=5)]
    keys = 8000
    primaries = Counter(route(instances, key=f"k{n}")[0] for n in range(keys))
    for name, share in {"w1": 1 / 8, "w2": 2 / 8, "w5": 5 / 8}.items():
        assert primaries[name] / keys == pytest.approx(share, abs=0.03)


def test_removing_an_instance_only_moves_the_payments_it_had() -> None:
    a, b, c = instance("a"), instance("b"), instance("c")
    keys = [f"order-{n}" for n in range(500)]
    before = {k: route([a, b, c], key=k)[0] for k in keys}
    after = {k: route([a, b], key=k)[0] for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "c")
