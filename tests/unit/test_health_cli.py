"""``tender health``: the table, ``--json`` and ``--check``, on a SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from registry.db import get_database
from registry.service import PluginRegistry
from surfaces.cli.health import health_app

runner = CliRunner()


@pytest.fixture
def reg(sqlite_url: str) -> Iterator[PluginRegistry]:
    from workers import runtime
    from workers.core.app import reconfigure

    runtime.reset()
    reconfigure()  # the embedded broker under this test's data dir
    yield PluginRegistry(get_database(sqlite_url), poll_s=0)
    runtime.reset()


def test_health_lists_every_instance_as_a_table(reg: PluginRegistry) -> None:
    reg.create_instance("sandbox", {}, tenant_id="acme", display_name="main", is_active=True)
    reg.create_instance("sandbox", {"outage": True}, display_name="spare")
    result = runner.invoke(health_app, [], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for heading in ("instance", "plugin", "tenant", "active", "health", "latency", "since"):
        assert heading in result.output
    assert "last error" in result.output
    assert "main" in result.output and "acme" in result.output and "(global)" in result.output
    assert "unknown" in result.output  # nothing checked yet


def test_health_check_runs_the_checks_now_then_prints(reg: PluginRegistry) -> None:
    spare = reg.create_instance("sandbox", {"outage": True}, display_name="spare", is_active=True)
    reg.create_instance("sandbox", {}, display_name="main", is_active=True)
    result = runner.invoke(health_app, ["--check"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "checked 2 instance(s)" in result.output
    assert "sandbox outage switch is on" in result.output  # the last error column
    assert reg.get_instance(spare.id).consecutive_failures == 1

    # --check ignores the recent-run guard: an operator asking gets a run
    again = runner.invoke(health_app, ["--check", "--json"])
    data = json.loads(again.output)
    assert data["run"]["checked"] == 2
    by_name = {record["instance"]: record for record in data["instances"]}
    assert by_name["spare"]["health"] == "unhealthy" and by_name["spare"]["routable"] is False
    assert by_name["spare"]["last_error"] == "sandbox outage switch is on"
    assert by_name["main"]["health"] == "healthy" and by_name["main"]["last_error"] is None
    assert by_name["main"]["latency_ms"] is not None and by_name["main"]["since"]


def test_health_json_without_check_does_not_run_checks(reg: PluginRegistry) -> None:
    reg.create_instance("sandbox", {}, display_name="main", is_active=True)
    result = runner.invoke(health_app, ["--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["run"] is None
    assert [(r["instance"], r["health"], r["active"]) for r in data["instances"]] == [
        ("main", "unknown", True)
    ]


def test_an_instance_in_error_shows_error_and_its_message(reg: PluginRegistry) -> None:
    view = reg.create_instance("sandbox", {}, display_name="keys", is_active=True)
    reg.mark_error(view.id, "configuration rejected: [paystack] Invalid key ***")
    data = json.loads(runner.invoke(health_app, ["--json"]).output)
    [record] = data["instances"]
    assert record["status"] == "error"
    assert record["last_error"] == "configuration rejected: [paystack] Invalid key ***"
    table = runner.invoke(health_app, [], env={"COLUMNS": "200"}).output
    [row] = [line for line in table.splitlines() if "keys" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[4] == "error" and cells[-1].endswith("Invalid key ***")  # health, last error
