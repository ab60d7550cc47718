"""Routing rules from every surface (issue 37): the REST API (draft, activate, explain,
422 naming the field, tenant-bound tokens kept to their tenant) and the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from registry.db import get_database
from registry.tokens import Scope, create_token
from surfaces.cli.main import app as cli_app
from surfaces.http.app import create_app
from workers import runtime


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def instances() -> tuple[Any, Any]:
    a = runtime.registry().create_instance(
        "sandbox", {}, display_name="a", priority=1, is_active=True
    )
    b = runtime.registry().create_instance(
        "sandbox", {}, display_name="b", priority=2, is_active=True
    )
    return a, b


def kenya_to(view: Any) -> dict[str, Any]:
    return {
        "rules": [
            {
                "name": "kenya",
                "when": [{"field": "billing_country", "op": "=", "value": "KE"}],
                "route": [{"instance": str(view.id)}],
            }
        ]
    }


def test_draft_try_activate_explain_over_rest(client: TestClient) -> None:
    a, b = instances()
    draft = client.post("/api/routing/rulesets", json={"document": kenya_to(b), "note": "KE to b"})
    assert draft.status_code == 201, draft.text
    draft_id = draft.json()["id"]
    ask = {"amount": "25.00", "currency": "NGN", "billing_country": "KE"}
    tried = client.post("/api/routing/explain", json=ask | {"ruleset_id": draft_id}).json()
    assert tried["rule"] == "kenya" and [r["display_name"] for r in tried["route"]] == ["b"]
    assert client.post("/api/routing/explain", json=ask).json()["rule"] is None
    activated = client.post(f"/api/routing/rulesets/{draft_id}/activate")
    assert activated.status_code == 200 and activated.json()["status"] == "active"
    runtime.registry().refresh(force=True)
    now = client.post("/api/routing/explain", json=ask).json()
    assert now["rule"] == "kenya" and now["ruleset_version"] == 1
    assert now["left_out"] == [
        {"instance_id": str(a.id), "display_name": "a", "plugin_name": "sandbox",
         "tenant_id": None, "reason": "not in rule 'kenya'"}
    ]  # fmt: skip
    listed = client.get("/api/routing/rulesets").json()
    assert [(v["version"], v["status"]) for v in listed] == [(1, "active")]
    cleared = client.post("/api/routing/clear", json={})
    assert cleared.json()["status"] == "retired"


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"rules": [{"name": "x", "when": [], "route": []}]}, "rules[0].when"),
        ({"rules": [{"name": "x", "when": [{"field": "amount", "op": ">", "value": "ten"}],
                     "route": [{"instance": "00000000-0000-0000-0000-000000000000"}]}]},
         "rules[0].when[0]: Value error"),
        ({"rules": [{"name": "x", "when": [{"field": "amount", "op": ">", "value": "10"}],
                     "route": [{"instance": "00000000-0000-0000-0000-000000000000"}]}]},
         "no provider instance 00000000-0000-0000-0000-000000000000 in this scope"),
    ],
)  # fmt: skip
def test_a_bad_ruleset_is_a_422_naming_the_field_and_nothing_is_saved(
    client: TestClient, document: dict[str, Any], says: str
) -> None:
    answer = client.post("/api/routing/rulesets", json={"document": document})
    assert answer.status_code == 422
    assert says.split(": Value error")[0] in answer.json()["detail"]
    assert client.get("/api/routing/rulesets").json() == []


def test_explain_asks_for_what_it_needs(client: TestClient) -> None:
    answer = client.post("/api/routing/explain", json={"currency": "NGN"})
    assert answer.status_code == 422 and "amount and a currency" in answer.json()["detail"]
    answer = client.post("/api/routing/explain", json={"amount": "1.001", "currency": "NGN"})
    assert answer.status_code == 422 and "decimal place" in answer.json()["detail"]
    answer = client.post(
        "/api/routing/explain", json={"payment_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert answer.status_code == 404


def test_a_tenant_bound_token_sees_and_changes_only_its_tenants_rules(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = runtime.registry().create_instance("sandbox", {}, tenant_id="t-a", is_active=True)
    theirs = runtime.registry().create_instance("sandbox", {}, tenant_id="t-b", is_active=True)
    monkeypatch.setenv("TENDER_API_TOKEN", "root-token-for-tests-0123456789")
    from config.settings import get_settings

    get_settings.cache_clear()
    _, token_a = create_token(get_database(), "a-admin", [Scope.ADMIN], tenant_id="t-a")
    root = {"Authorization": "Bearer root-token-for-tests-0123456789"}
    as_a = {"Authorization": f"Bearer {token_a}"}
    b_draft = client.post(
        "/api/routing/rulesets", json={"tenant_id": "t-b", "document": kenya_to(theirs)},
        headers=root,
    ).json()  # fmt: skip
    assert client.get(f"/api/routing/rulesets/{b_draft['id']}", headers=as_a).status_code == 404
    assert (
        client.post(f"/api/routing/rulesets/{b_draft['id']}/activate", headers=as_a).status_code
        == 404
    )
    assert client.get("/api/routing/rulesets?tenant_id=t-b", headers=as_a).status_code == 403
    assert client.post(
        "/api/routing/rulesets", json={"tenant_id": "t-b", "document": kenya_to(theirs)},
        headers=as_a,
    ).status_code == 403  # fmt: skip
    # its own rules may not name another tenant's instance either
    refused = client.post(
        "/api/routing/rulesets", json={"document": kenya_to(theirs)}, headers=as_a
    )
    assert refused.status_code == 422
    own = client.post("/api/routing/rulesets", json={"document": kenya_to(mine)}, headers=as_a)
    assert own.status_code == 201 and own.json()["tenant_id"] == "t-a"
    explained = client.post(
        "/api/routing/explain", json={"amount": "5", "currency": "NGN", "ruleset_id": b_draft["id"]},
        headers=as_a,
    )  # fmt: skip
    assert explained.status_code == 404


def test_the_cli_drafts_activates_and_explains(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    _, b = instances()
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(kenya_to(b) | {"retry_soft_declines": True}))
    drafted = runner.invoke(cli_app, ["route", "draft", str(rules), "--note", "KE"])
    assert drafted.exit_code == 0, drafted.output
    (version,) = json.loads(runner.invoke(cli_app, ["route", "list", "--json"]).output)
    activated = runner.invoke(cli_app, ["route", "activate", version["id"]])
    assert activated.exit_code == 0 and "active" in activated.output
    runtime.registry().refresh(force=True)
    told = runner.invoke(
        cli_app, ["route", "explain", "--amount", "9.99", "--currency", "NGN", "--country", "KE"]
    )
    assert told.exit_code == 0, told.output
    assert "rule 'kenya' matched" in told.output and "left out a: not in rule" in told.output
    assert "soft-decline retries: on" in told.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": [{"name": "x"}]}')
    refused = runner.invoke(cli_app, ["route", "draft", str(bad)])
    assert refused.exit_code == 1 and "rules[0].when" in refused.output


def test_the_console_drafts_tries_activates_and_shows_the_decision(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import reset_settings
    from tests.unit.test_console import ADMIN, post, sign_in
    from workers.core.app import reconfigure

    monkeypatch.setenv("TENDER_API_TOKEN", ADMIN)
    reset_settings()
    runtime.reset()
    reconfigure()
    with TestClient(create_app()) as console:
        _, b = instances()
        sign_in(console)
        page = console.get("/admin/routing")
        assert page.status_code == 200 and "No rules" in page.text
        refused = post(console, "/admin/routing/drafts", document='{"rules": [{"name": "x"}]}')
        assert refused.status_code == 422 and "rules[0].when" in refused.text
        saved = post(
            console, "/admin/routing/drafts", document=json.dumps(kenya_to(b)),
            retry_soft_declines="on", note="KE",
        )  # fmt: skip
        assert saved.status_code == 303
        (draft,) = list_rulesets_json(console)
        assert draft["document"]["retry_soft_declines"] is True
        tried = console.get(
            "/admin/routing",
            params={"amount": "10", "currency": "NGN", "country": "KE", "version": draft["id"]},
        )
        assert "rule &#39;kenya&#39; matched" in tried.text and "a: not in rule" in tried.text
        activated = post(console, f"/admin/routing/{draft['id']}/activate")
        assert activated.status_code == 303
        assert "v1 is active" in console.get(activated.headers["location"]).text
        shown = console.get("/admin/routing").text
        assert 'id="rules"' in shown and "billing_country = KE" in shown
        assert "soft-decline retries <strong>on</strong>" in shown
    runtime.reset()
    reset_settings()


def list_rulesets_json(client: TestClient) -> list[dict[str, Any]]:
    from tests.unit.test_console import ADMIN

    answer = client.get("/api/routing/rulesets", headers={"Authorization": f"Bearer {ADMIN}"})
    return list(answer.json())


def test_billing_sends_routing_facts_checked_at_the_boundary(client: TestClient) -> None:
    from workers.ledger.records import Payment

    body = {
        "order_id": "o-facts", "amount": "12.00", "currency": "NGN",
        "customer_email": "ada@example.com",
    }  # fmt: skip
    bad = client.post("/payments", json=body | {"card_bin": "4084x"})
    assert bad.status_code == 422 and "card_bin" in bad.json()["detail"]
    bad = client.post("/payments", json=body | {"billing_country": "N1"})
    assert bad.status_code == 422 and "billing_country" in bad.json()["detail"]
    made = client.post(
        "/payments",
        json=body | {"billing_country": "ng", "card_brand": "Visa", "card_bin": "408408"},
    )
    assert made.status_code == 201, made.text
    with get_database().sessions() as session:
        stored = session.get(Payment, uuid.UUID(made.json()["payment_id"]))
        assert stored is not None
        assert stored.route_facts == {
            "billing_country": "NG", "card_brand": "visa", "card_bin": "408408"
        }  # fmt: skip
