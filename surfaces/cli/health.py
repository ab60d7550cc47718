"""``tender health``: every provider instance's health, and checks on demand.

tender health            # a table: instance, plugin, tenant, active, health, latency, since, last error
tender health --json     # the same as JSON
tender health --check    # run every health check once now (alerts included), then print
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from registry.instances import InstanceStatus, InstanceView

health_app = typer.Typer(
    help="Provider health: current state, and checks on demand.",
    invoke_without_command=True,
    add_completion=False,
)

_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red bold", "unknown": "dim"}


def last_error(view: InstanceView) -> str:
    """Why the instance is (or was last seen) failing; empty when it is fine."""
    if view.status == InstanceStatus.ERROR:
        return view.status_message or "configuration rejected"
    if view.health == "unhealthy" or view.consecutive_failures:
        return view.health_message or ""
    return ""


def as_record(view: InstanceView) -> dict[str, Any]:
    def when(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "id": str(view.id),
        "instance": view.display_name,
        "plugin": view.plugin_name,
        "tenant_id": view.tenant_id,
        "active": view.is_active,
        "status": view.status,
        "health": view.health,
        "latency_ms": view.health_latency_ms,
        "since": when(view.health_since),
        "consecutive_failures": view.consecutive_failures,
        "last_checked_at": when(view.last_checked_at),
        "last_error": last_error(view) or None,
        "routable": view.routable,
    }


def _table(views: list[InstanceView]) -> Table:
    table = Table(title="Provider health")
    for column in ("instance", "plugin", "tenant", "active", "health", "latency", "since"):
        table.add_column(column, no_wrap=column != "instance")
    table.add_column("last error", overflow="fold")
    for view in views:
        health = view.health if view.status != InstanceStatus.ERROR else "error"
        style = _STYLE.get(view.health, "") if health != "error" else "red bold"
        table.add_row(
            f"{escape(view.display_name)} [dim]{str(view.id)[:8]}[/dim]",
            escape(view.plugin_name),
            escape(view.tenant_id or "(global)"),
            "yes" if view.is_active else "no",
            f"[{style}]{health}[/{style}]" if style else health,
            f"{view.health_latency_ms:.0f} ms" if view.health_latency_ms is not None else "-",
            view.health_since.strftime("%Y-%m-%d %H:%M:%S") if view.health_since else "-",
            escape(last_error(view)),
        )
    return table


@health_app.callback(invoke_without_command=True)
def health(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    check: bool = typer.Option(
        False, "--check", help="Run every health check once now (alerts included), then print."
    ),
) -> None:
    """Show every provider instance's health."""
    if ctx.invoked_subcommand is not None:
        return
    from registry.service import PluginRegistry
    from workers.monitoring.health import health_check_all

    run = health_check_all(force=True) if check else None
    views = PluginRegistry().list_instances()
    if as_json:
        typer.echo(json.dumps({"run": run, "instances": [as_record(v) for v in views]}, indent=2))
        return
    console = Console()
    if run is not None:
        console.print(
            f"checked {run.get('checked', 0)} instance(s) in {run.get('duration_ms', 0)} ms;"
            f" alerts: {len(run.get('alerts', []))}"
        )
    if not views:
        console.print("no provider instances")
        return
    console.print(_table(views))
