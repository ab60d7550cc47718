"""Tenant isolation (issue 36): a token bound to tenant A reaches none of tenant B's
objects, by any route. Every route of the OpenAPI description and every console page is
walked with an admin token of tenant A against tenant B's payment, refund and instance:
each answers 403 or 404, lists leave B out, and B's canary secret and customer never show."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import reset_settings
from registry.audit import list_audit
from registry.db import get_database
from registry.experiments import create_experiment
from registry.rulesets import create_draft
from registry.tokens import create_token
from tests.unit.test_scopes import BOOTSTRAP, CONSOLE_SCOPES, UNSCOPED
from workers import runtime
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.methods import import_payment_method
from workers.payments.refunds import list_refunds, refund_payment
from workers.tasks import processor

CANARY = f"sk_canary_{uuid.uuid4().hex}"
B_EMAIL = "bea@tenant-b.example"


@dataclass
class World:
    client: TestClient
    a_admin: str  # bound to t-a, every scope
    b_payment: uuid.UUID
    b_refund: uuid.UUID
    b_instance: uuid.UUID
    platform_instance: uuid.UUID
    b_token: uuid.UUID
    b_method: str
    b_ruleset: uuid.UUID
    b_experiment: uuid.UUID


class _Quiet:
    def publish(self, rows: Any) -> None:
        pass


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pay(tenant: str, amount: str = "50.00", email: str = "ada@example.com") -> uuid.UUID:
    fields = _validated(
        f"ord-{uuid.uuid4().hex[:8]}", amount, "NGN", email, "card", None, tenant, None
    )
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    assert get_payment(payment.id).status.value == "succeeded"
    return payment.id


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    monkeypatch.setenv("TENDER_API_TOKEN", BOOTSTRAP)
    reset_settings()
    runtime.reset()
    reconfigure()
    registry = runtime.registry()
    book = str(tmp_path / "book.db")
    registry.create_instance("sandbox", {"charge_book": book}, tenant_id="t-a", is_active=True)
    b = registry.create_instance(
        "sandbox", {"charge_book": book, "api_key": CANARY}, tenant_id="t-b", is_active=True
    )
    platform = registry.create_instance("sandbox", {"charge_book": book}, priority=200)
    b_payment = pay("t-b", email=B_EMAIL)
    refund = refund_payment(b_payment, "1.00", publisher=_Quiet())  # type: ignore[arg-type]
    _, token = create_token(get_database(), "tenant-a-admin", ["admin"], tenant_id="t-a")
    b_token, _ = create_token(get_database(), "tenant-b-billing", ["pay"], tenant_id="t-b")
    b_method = import_payment_method(b.id, CANARY, "cust-b").id
    b_rules = {"rules": [], "default": [{"instance": str(b.id)}]}
    b_ruleset = create_draft(get_database(), b_rules, tenant_id="t-b").id
    b_spare = registry.create_instance("sandbox", {"charge_book": book}, tenant_id="t-b")
    b_experiment = create_experiment(
        get_database(),
        {
            "name": "b-test",
            "arms": [
                {"name": "control", "instance": str(b.id), "share": 50},
                {"name": "variant", "instance": str(b_spare.id), "share": 50},
            ],
            "control": "control",
        },
        tenant_id="t-b",
    ).id
    with TestClient(create_app()) as client:
        yield World(
            client, token, b_payment, refund.id, b.id, platform.id, b_token, b_method, b_ruleset,
            b_experiment,
        )  # fmt: skip
    runtime.reset()
    reset_settings()


def fill(path: str, world: World) -> str:
    ids = {
        "payment_id": str(world.b_payment),
        "refund_id": str(world.b_refund),
        "instance_id": str(world.b_instance),
        "token_id": str(world.b_token),
        "method_id": world.b_method,
        "ruleset_id": str(world.b_ruleset),
        "experiment_id": str(world.b_experiment),
        "plugin": "sandbox",
        "action": "deactivate",
    }
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/payments"): {
        "order_id": "o-cross", "amount": "5.00", "currency": "NGN",
        "customer_email": "ada@example.com", "tenant_id": "t-b",
    },
    ("post", "/instances"): {
        "plugin_name": "sandbox", "config": {}, "tenant_id": "t-b",
    },
    ("post", "/payments/{payment_id}/refunds"): {"amount": "1.00"},
    ("post", "/refunds/{refund_id}/settle"): {"outcome": "failed", "reason": "probe"},
    ("patch", "/instances/{instance_id}/config"): {"latency_ms": 1},
    ("patch", "/instances/{instance_id}"): {"priority": 1},
    ("post", "/api/tokens"): {"name": "sneaky", "scopes": ["admin"], "tenant_id": "t-b"},
    ("post", "/api/routing/rulesets"): {"tenant_id": "t-b", "document": {"rules": []}},
    ("post", "/api/routing/clear"): {"tenant_id": "t-b"},
    ("post", "/api/experiments"): {
        "tenant_id": "t-b", "name": "sneaky", "control": "a",
        "arms": [{"name": "a", "instance": "x", "share": 50}, {"name": "b", "instance": "y", "share": 50}],
    },
    ("post", "/api/experiments/{experiment_id}/stop"): {"reason": "probe"},
    ("post", "/api/experiments/{experiment_id}/promote"): {"arm": "variant"},
}  # fmt: skip
LISTS = {
    ("get", "/plugins"), ("get", "/instances"), ("get", "/api/audit"), ("get", "/api/tokens"),
    ("get", "/payment-methods"), ("get", "/api/routing/rulesets"), ("get", "/api/experiments"),
    ("get", "/api/routing/outcomes"),
}  # fmt: skip


def leaks(text: str, world: World, *, listed: bool = False) -> list[str]:
    """B's secret and customer in an answer to A; in a list, B's ids too (elsewhere an id
    may be the caller's own input echoed in a 404)."""
    secrets_of_b = [CANARY, B_EMAIL]
    if listed:
        secrets_of_b += [
            str(world.b_payment), str(world.b_instance), world.b_method, str(world.b_ruleset),
            str(world.b_experiment),
        ]  # fmt: skip
    return [s for s in secrets_of_b if s in text]


def test_every_api_route_keeps_tenant_a_out_of_tenant_b(world: World) -> None:
    spec = world.client.get("/openapi.json", headers=bearer(BOOTSTRAP)).json()
    walked = 0
    for path, methods in spec["paths"].items():
        if path in UNSCOPED:
            continue
        for method in methods:
            body = BODIES.get((method, path))
            if (method, path) == ("post", "/payment-methods"):  # onto B's instance
                body = {"instance_id": str(world.b_instance), "token": "t", "customer_ref": "c"}
            if (method, path) == ("post", "/api/routing/explain"):  # B's payment
                body = {"payment_id": str(world.b_payment)}
            answer = world.client.request(
                method.upper(),
                fill(path, world),
                json=body,
                headers=bearer(world.a_admin),
            )
            walked += 1
            listed = (method, path) in LISTS
            assert leaks(answer.text, world, listed=listed) == [], (method, path)
            if (method, path) in LISTS:
                assert answer.status_code == 200, (method, path, answer.text)
            else:
                assert answer.status_code in (403, 404), (method, path, answer.status_code)
    assert walked >= 15
    # nothing of B moved: its payment, refund and instance are as they were
    assert get_payment(world.b_payment).refunded_minor == 100
    assert [r.status.value for r in list_refunds(world.b_payment)] == ["succeeded"]
    assert runtime.registry().get_instance(world.b_instance).is_active


def test_every_console_page_keeps_tenant_a_out_of_tenant_b(world: World) -> None:
    """The console takes the token in the Authorization header too; its forms need the
    console's origin and CSRF token, which this walk sends, so a refusal is the tenant's."""
    csrf = "c" * 40
    world.client.cookies.set("tender_csrf", csrf, path="/admin")
    lists = {
        ("GET", "/admin"), ("GET", "/admin/payments"), ("GET", "/admin/audit"),
        ("GET", "/admin/tokens"), ("GET", "/admin/methods"), ("GET", "/admin/routing"),
        ("GET", "/admin/experiments"),
    }  # fmt: skip
    form = {"csrf": csrf, "amount": "1.00", "tenant_id": "t-b", "name": "sneaky", "scope": "admin"}
    for (method, path), _ in CONSOLE_SCOPES.items():
        if "{plugin}" in path:
            continue  # making an instance: the tenant of the form, checked below
        answer = world.client.request(
            method,
            fill(path, world),
            data=form if method == "POST" else None,
            headers={**bearer(world.a_admin), "origin": "http://testserver"},
            follow_redirects=False,
        )
        assert leaks(answer.text, world, listed=(method, path) in lists) == [], (method, path)
        if (method, path) in lists:
            assert answer.status_code == 200, (method, path)
        else:
            assert answer.status_code in (403, 404), (method, path, answer.status_code)
    made = world.client.post(
        "/admin/instances/new/sandbox",
        data={"csrf": csrf, "tenant_id": "t-b", "display_name": "sneaky"},
        headers={**bearer(world.a_admin), "origin": "http://testserver"},
        follow_redirects=False,
    )
    assert made.status_code == 403
    assert all(v.display_name != "sneaky" for v in runtime.registry().list_instances())


def test_a_bound_token_sees_and_changes_its_own_tenant(world: World) -> None:
    """What the bound token may do: pay for its tenant (a body naming none gets it), read
    and refund its payments, see platform instances read-only, and its audit records."""
    made = world.client.post(
        "/payments",
        json={
            "order_id": "o-own",
            "amount": "5.00",
            "currency": "NGN",
            "customer_email": "ada@example.com",
            "idempotency_key": "k-own",
        },
        headers=bearer(world.a_admin),
    )
    assert made.status_code == 201, made.text
    own = made.json()["payment_id"]
    read = world.client.get(f"/payments/{own}", headers=bearer(world.a_admin))
    assert read.status_code == 200 and read.json()["tenant_id"] == "t-a"

    listed = world.client.get("/instances", headers=bearer(world.a_admin)).json()
    assert {v["tenant_id"] for v in listed} == {"t-a", None}
    platform = str(world.platform_instance)
    assert (
        world.client.get(f"/instances/{platform}", headers=bearer(world.a_admin)).status_code == 200
    )
    switched = world.client.post(f"/instances/{platform}/deactivate", headers=bearer(world.a_admin))
    assert switched.status_code == 403

    a_payment = pay("t-a")
    refunded = world.client.post(
        f"/payments/{a_payment}/refunds", json={"amount": "2.00"}, headers=bearer(world.a_admin)
    )
    assert refunded.status_code == 201, refunded.text
    # the refund is audited with its actor and tenant; A reads only its tenant's records
    trail = world.client.get("/api/audit", headers=bearer(world.a_admin)).json()
    assert trail and {r["tenant_id"] for r in trail} == {"t-a"}
    [record] = [r for r in trail if r["action"] == "refund.request"]
    assert record["actor"] == "tenant-a-admin" and record["target"] == refunded.json()["id"]
    everything = list_audit(get_database(), limit=1000)
    assert any(r.tenant_id == "t-b" for r in everything)  # B's are there, A just cannot see them


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    owner=st.sampled_from(["t-a", "t-b", "t-c"]),
    reader=st.sampled_from(["t-a", "t-b", "t-c"]),
)
def test_any_tenant_reads_its_own_payments_only(world: World, owner: str, reader: str) -> None:
    # Hypothesis seeds the global random alike for every example, and the ledger draws its
    # event ids from it (fork-safe, seeded by the OS in production): reseed from the OS
    random.seed(uuid.uuid4().int)
    for tenant in {owner, reader}:
        if not any(v.tenant_id == tenant for v in runtime.registry().list_instances()):
            runtime.registry().create_instance("sandbox", {}, tenant_id=tenant, is_active=True)
    payment = pay(owner)
    _, token = create_token(get_database(), f"reader-{reader}", ["read"], tenant_id=reader)
    for path in (f"/payments/{payment}", f"/payments/{payment}/refunds"):
        answer = world.client.get(path, headers=bearer(token))
        assert answer.status_code == (200 if owner == reader else 404), (owner, reader, path)


def test_a_platform_operator_filters_the_console_by_tenant(world: World) -> None:
    a_payment = pay("t-a")
    page = world.client.get("/admin/payments?tenant=t-b", headers=bearer(BOOTSTRAP))
    assert page.status_code == 200
    assert str(world.b_payment) in page.text and str(a_payment) not in page.text
    # a bound user's filter is its tenant, whatever it asks
    bound = world.client.get("/admin/payments?tenant=t-b", headers=bearer(world.a_admin))
    assert str(world.b_payment) not in bound.text and str(a_payment) in bound.text


def test_tokens_over_rest_stay_within_the_tenant(world: World) -> None:
    """Tokens are made over REST too (issue 36): a bound admin lists and makes only its
    tenant's tokens (a body naming none is bound to its tenant), and cannot revoke B's."""
    listed = world.client.get("/api/tokens", headers=bearer(world.a_admin)).json()
    assert {t["tenant_id"] for t in listed} == {"t-a"}
    made = world.client.post(
        "/api/tokens", json={"name": "shop-a", "scopes": ["pay"]}, headers=bearer(world.a_admin)
    )
    assert made.status_code == 201 and made.json()["tenant_id"] == "t-a"
    token = made.json()["token"]
    assert world.client.get("/instances", headers=bearer(token)).status_code == 403  # pay only
    gone = world.client.delete(f"/api/tokens/{world.b_token}", headers=bearer(world.a_admin))
    assert gone.status_code == 404
    platform = world.client.post(
        "/api/tokens", json={"name": "p", "scopes": ["read"]}, headers=bearer(BOOTSTRAP)
    )
    assert platform.status_code == 201 and platform.json()["tenant_id"] is None
    revoked = world.client.delete(f"/api/tokens/{made.json()['id']}", headers=bearer(world.a_admin))
    assert revoked.status_code == 204
    assert world.client.get("/payments/x", headers=bearer(token)).status_code == 401


def test_tokens_in_the_console_stay_within_the_tenant(world: World) -> None:
    """The console makes and revokes tokens too (issue 36): shown once, bound to the
    operator's tenant when the operator is bound, listed per tenant."""
    csrf = "d" * 40
    world.client.cookies.set("tender_csrf", csrf, path="/admin")
    same_origin = {"origin": "http://testserver"}
    made = world.client.post(
        "/admin/tokens",
        data={"csrf": csrf, "name": "shop-a-ops", "scope": ["operate"]},
        headers={**bearer(world.a_admin), **same_origin},
    )
    assert made.status_code == 201
    shown = re.search(r'<pre id="new-token">(tnd_[^<]+)</pre>', made.text)
    assert shown is not None
    token = shown.group(1)
    listed = world.client.get("/admin/tokens", headers=bearer(world.a_admin))
    assert "shop-a-ops" in listed.text and "tenant-b-billing" not in listed.text
    assert token not in listed.text  # shown once
    # the new token is bound to t-a: B's payment does not exist for it
    assert (
        world.client.get(f"/payments/{world.b_payment}", headers=bearer(token)).status_code == 404
    )
    revoked = world.client.post(
        f"/admin/tokens/{world.b_token}/revoke",
        data={"csrf": csrf},
        headers={**bearer(world.a_admin), **same_origin},
    )
    assert revoked.status_code == 404


def test_a_platform_operator_narrows_the_providers_to_one_tenant(world: World) -> None:
    every = world.client.get("/admin", headers=bearer(BOOTSTRAP)).text
    assert str(world.b_instance) in every
    only_a = world.client.get("/admin?tenant=t-a", headers=bearer(BOOTSTRAP)).text
    assert str(world.b_instance) not in only_a and str(world.platform_instance) in only_a
