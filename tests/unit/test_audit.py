"""The audit trail (issue 25): every change to instances, routing, activation, tokens and
keys, from REST, console, CLI or code, is recorded in the change's own transaction, with
secrets masked; and a canary secret given as a literal, an env reference or in a config
never shows in any answer, page, CLI output, log line, event, exception or audit record."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from config.settings import reset_settings
from providers.errors import ConfigurationError
from registry.audit import list_audit
from registry.db import get_database
from registry.tokens import create_token
from surfaces.cli.main import app as cli
from workers import runtime

BOOTSTRAP = "bootstrap-token-for-audit-tests"
CANARY = "sk_test_CANARY_c4n4ry_0123456789abcdef"
ENV_CANARY = "sk_test_ENVCANARY_e5e5_9876543210"


@pytest.fixture
def api(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    monkeypatch.setenv("TENDER_API_TOKEN", BOOTSTRAP)
    reset_settings()
    runtime.reset()
    reconfigure()
    with TestClient(create_app()) as client:
        yield client
    runtime.reset()


def test_changes_from_rest_cli_and_code_are_audited_with_their_actor(api: TestClient) -> None:
    _, token = create_token(get_database(), "ops-alice", ["admin"], actor="code")
    auth = {"Authorization": f"Bearer {token}"}
    made = api.post(
        "/instances",
        headers=auth,
        json={"plugin_name": "sandbox", "config": {"api_key": CANARY}, "priority": 5},
    ).json()
    api.patch(f"/instances/{made['id']}", headers=auth, json={"weight": 3})
    api.post(f"/instances/{made['id']}/activate", headers=auth)
    CliRunner().invoke(cli, ["plugins", "deactivate", made["id"]])
    runtime.registry().update_config(made["id"], {"latency_ms": 7}, actor="billing-migration")

    trail = list_audit(get_database(), target=made["id"])
    assert [(r.action, r.actor.split(":")[0]) for r in reversed(trail)] == [
        ("instance.create", "ops-alice"),
        ("instance.route", "ops-alice"),
        ("instance.activate", "ops-alice"),
        ("instance.deactivate", "cli"),
        ("instance.configure", "billing-migration"),
    ]
    route = next(r for r in trail if r.action == "instance.route")
    assert (route.before["weight"], route.after["weight"]) == (1, 3)
    assert trail[-1].after["config"]["api_key"] == "********"
    assert {r["action"] for r in api.get("/api/audit", headers=auth).json()} >= {
        "token.create",
        "instance.create",
    }
    read_only = create_token(get_database(), "viewer", ["read"])[1]
    assert (
        api.get("/api/audit", headers={"Authorization": f"Bearer {read_only}"}).status_code == 403
    )


def test_a_change_that_fails_leaves_no_record(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError):
        runtime.registry().create_instance("sandbox", {"latency_ms": "slow"})
    assert list_audit(get_database()) == []


def test_a_canary_secret_shows_nowhere(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CANARY_KEY", ENV_CANARY)
    auth = {"Authorization": f"Bearer {BOOTSTRAP}"}
    outputs: list[str] = []
    literal = api.post(
        "/instances", headers=auth, json={"plugin_name": "sandbox", "config": {"api_key": CANARY}}
    )
    referenced = api.post(
        "/instances",
        headers=auth,
        json={"plugin_name": "sandbox", "config": {"api_key": "env:CANARY_KEY"}},
    )
    outputs += [literal.text, referenced.text]
    outputs += [api.get(path, headers=auth).text for path in ("/instances", "/admin", "/api/audit")]
    outputs.append(
        api.patch(
            f"/instances/{literal.json()['id']}/config",
            headers=auth,
            json={"api_key": CANARY + "x", "latency_ms": "slow"},
        ).text
    )  # a refused change echoes nothing
    runner = CliRunner()
    for command in (["plugins", "list"], ["plugins", "list", "--json"], ["audit", "--json"]):
        outputs.append(runner.invoke(cli, command).output)
    outputs.append(runner.invoke(cli, ["secrets", "check"]).output)
    for view in runtime.registry().list_instances():
        plugin = runtime.registry().plugin_for(view)
        outputs += [repr(plugin), str(plugin.config)]
    with get_database().engine.connect() as connection:
        for table in ("audit_log", "plugin_instances", "outbox"):
            outputs += [str(row) for row in connection.execute(text(f"SELECT * FROM {table}"))]
    outputs.append(caplog.text)
    everything = "\n".join(outputs)
    for secret in (CANARY, ENV_CANARY):
        runs = {secret[i : i + 8] for i in range(len(secret) - 7)}
        leaked = sorted(r for r in runs if re.search(re.escape(r), everything))
        assert leaked == [], secret
    assert json.loads(literal.text)["config"]["api_key"] == "********"
