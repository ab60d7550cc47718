"""Scoped operator tokens (issue 25): every route declares its scope, and each route,
walked from the OpenAPI description, refuses (403) the tokens whose scopes do not reach it,
401 for missing, unknown, revoked or expired tokens."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from config.settings import reset_settings
from registry.db import get_database
from registry.tokens import IMPLIES, Scope, create_token, list_tokens, revoke_token
from surfaces.cli.main import app as cli
from surfaces.http.auth import ScopeRequirement
from surfaces.http.console.session import ConsoleAccess
from workers import runtime

BOOTSTRAP = "bootstrap-token-for-scope-tests"
UNSCOPED = {
    "/webhooks/{plugin}",
    "/healthz",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/docs/oauth2-redirect",
    # the console's way in and out, and its stylesheet (surfaces.http.console)
    "/admin/sign-in",
    "/admin/sign-out",
    "/admin/static/console.css",
}


# The console's routes and the scope each must demand (surfaces/http/console/routes.py);
# the admin-only actions behind the operate route (edit, delete) are checked in the route
# itself (tests/unit/test_console.py).
CONSOLE_SCOPES = {
    ("GET", "/admin"): Scope.READ,
    ("GET", "/admin/instances/new/{plugin}"): Scope.ADMIN,
    ("POST", "/admin/instances/new/{plugin}"): Scope.ADMIN,
    ("GET", "/admin/instances/{instance_id}"): Scope.READ,
    ("GET", "/admin/instances/{instance_id}/edit"): Scope.ADMIN,
    ("GET", "/admin/instances/{instance_id}/delete"): Scope.ADMIN,
    ("POST", "/admin/instances/{instance_id}/{action}"): Scope.OPERATE,
    ("GET", "/admin/payments"): Scope.READ,
    ("GET", "/admin/payments/{payment_id}"): Scope.READ,
    ("GET", "/admin/payments/{payment_id}/refund"): Scope.OPERATE,
    ("POST", "/admin/payments/{payment_id}/refund"): Scope.OPERATE,
    ("GET", "/admin/audit"): Scope.ADMIN,
    ("GET", "/admin/methods"): Scope.READ,
    ("POST", "/admin/methods/{method_id}/revoke"): Scope.OPERATE,
    ("GET", "/admin/tokens"): Scope.ADMIN,
    ("POST", "/admin/tokens"): Scope.ADMIN,
    ("POST", "/admin/tokens/{token_id}/revoke"): Scope.ADMIN,
    ("GET", "/admin/routing"): Scope.READ,
    ("POST", "/admin/routing/drafts"): Scope.ADMIN,
    ("POST", "/admin/routing/clear"): Scope.ADMIN,
    ("POST", "/admin/routing/{ruleset_id}/activate"): Scope.ADMIN,
    ("GET", "/admin/experiments"): Scope.READ,
    ("POST", "/admin/experiments"): Scope.ADMIN,
    ("POST", "/admin/experiments/{experiment_id}/{action}"): Scope.ADMIN,
}


@pytest.fixture
def client(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    monkeypatch.setenv("TENDER_API_TOKEN", BOOTSTRAP)
    reset_settings()
    runtime.reset()
    reconfigure()
    with TestClient(create_app()) as test_client:
        yield test_client
    runtime.reset()


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, including those of included routers (kept as routers by FastAPI;
    Tender's routers have no prefix, so their paths are the app's)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def requirement(route: APIRoute) -> ScopeRequirement | ConsoleAccess | None:
    """The route's scope check: the API's ScopeRequirement, or the console's ConsoleAccess
    (a parameter's dependency, wherever it sits in the route's dependency tree)."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, ScopeRequirement | ConsoleAccess):
            return dependency.call
        pending += dependency.dependencies
    return None


def test_every_operator_and_billing_route_declares_a_scope(client: TestClient) -> None:
    routes = api_routes(client.app.routes)  # type: ignore[attr-defined]
    assert len(routes) >= 16
    undeclared = [r.path for r in routes if requirement(r) is None and r.path not in UNSCOPED]
    assert undeclared == []


def scope_refused(answer: Any) -> bool:
    """A 403 for the token's scope (a console form may also be refused for its CSRF
    token or origin, which says so: that is not this check's refusal)."""
    if answer.status_code != 403:
        return False
    return "scope" in answer.text


def test_each_route_refuses_the_scopes_it_must(client: TestClient) -> None:
    """Every route the app serves, the API's (in the OpenAPI description) and the
    console's (left out of it), walked with a token of each scope and with none."""
    tokens = {
        scope: create_token(get_database(), f"{scope.value}-holder", [scope.value])[1]
        for scope in Scope
    }
    spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {BOOTSTRAP}"}).json()
    routes = {
        (r.path, method): requirement(r)
        for r in api_routes(client.app.routes)  # type: ignore[attr-defined]
        for method in r.methods
    }
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert documented <= set(routes)
    checked: set[tuple[str, str]] = set()
    for (path, method), needed in sorted(routes.items()):
        if needed is None:
            assert path in UNSCOPED, path
            continue
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        for scope, token in tokens.items():
            answer = client.request(
                method,
                url,
                headers={"Authorization": f"Bearer {token}"},
                json={},
                follow_redirects=False,
            )
            allowed = any(s in IMPLIES[scope] for s in needed.scopes)
            assert scope_refused(answer) is (not allowed), (method, path, scope, answer.text)
        anonymous = client.request(method, url, follow_redirects=False)
        if path.startswith("/admin"):  # the console sends a person to its sign-in page
            assert anonymous.status_code == 303, (method, path)
            assert anonymous.headers["location"].startswith("/admin/sign-in")
        else:
            assert anonymous.status_code == 401, (method, path)
        checked.add((path, method))
    console = {(m, p): routes[(p, m)] for p, m in checked if p.startswith("/admin")}
    assert len(checked) - len(console) >= 12
    assert {key: needed.scopes for key, needed in console.items() if needed} == {
        key: (scope,) for key, scope in CONSOLE_SCOPES.items()
    }


def test_unknown_revoked_and_expired_tokens_are_401(client: TestClient) -> None:
    headers = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    token_id, token = create_token(get_database(), "ops", ["operate"])
    assert client.get("/instances", headers=headers(token)).status_code == 200
    assert client.get("/instances", headers=headers(token + "x")).status_code == 401
    revoke_token(get_database(), token_id)
    assert client.get("/instances", headers=headers(token)).status_code == 401
    _, brief = create_token(get_database(), "brief", ["read"], expires_in_s=0.2)
    assert client.get("/instances", headers=headers(brief)).status_code == 200
    time.sleep(0.3)
    assert client.get("/instances", headers=headers(brief)).status_code == 401


def test_tokens_are_stored_hashed_and_shown_once(sqlite_url: str) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["tokens", "create", "--name", "billing", "--scope", "pay"])
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert token.startswith("tnd_")
    listed = runner.invoke(cli, ["tokens", "list"])
    assert "billing" in listed.output and token not in listed.output
    [row] = list_tokens(get_database())
    assert token not in (row.token_hash, row.scopes, row.name) and row.scopes == "pay"
    refused = runner.invoke(cli, ["tokens", "create", "--name", "x", "--scope", "root"])
    assert refused.exit_code == 1 and "scopes must be among" in refused.output


def test_the_api_description_and_its_pages_need_a_read_token(client: TestClient) -> None:
    """/docs, /redoc and /openapi.json name every route and field: with auth on they
    answered anyone (issue 36). Now a token with the read scope, Bearer or Basic."""
    import base64

    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 401, path
    _, pay_only = create_token(get_database(), "billing", ["pay"])
    assert (
        client.get("/openapi.json", headers={"Authorization": f"Bearer {pay_only}"}).status_code
        == 403
    )
    _, reader = create_token(get_database(), "reader", ["read"])
    assert (
        client.get("/openapi.json", headers={"Authorization": f"Bearer {reader}"}).status_code
        == 200
    )
    basic = base64.b64encode(f"tender:{reader}".encode()).decode()
    assert client.get("/docs", headers={"Authorization": f"Basic {basic}"}).status_code == 200
