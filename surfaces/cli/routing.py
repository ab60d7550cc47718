"""``tender route``: routing rules as versions (draft, try, activate) and explanations."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from surfaces.cli.errors import cli_actor, fail, user_errors

route_app = typer.Typer(
    help="Routing rules: draft, try, activate, and explain a route.", no_args_is_help=True
)


console = Console()


def _json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _registry() -> Any:
    from workers import runtime

    return runtime.registry()


@route_app.command("list")
def route_list(
    tenant: Annotated[str | None, typer.Option(help="A tenant's rules (default: global).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A scope's ruleset versions, newest first."""
    from registry.db import get_database
    from registry.rulesets import list_rulesets

    with user_errors():
        versions = list_rulesets(get_database(), tenant_id=tenant)
    if as_json:
        _json([v.model_dump(mode="json") for v in versions])
        return
    table = Table(title=f"Routing rules: {escape(tenant or 'global')}")
    for column in ("id", "version", "status", "rules", "retries", "by", "note"):
        table.add_column(column, overflow="fold")
    for v in versions:
        table.add_row(
            str(v.id), str(v.version), v.status,
            ", ".join(r["name"] for r in v.document.get("rules", [])) or "(none)",
            "on" if v.document.get("retry_soft_declines") else "off",
            escape(v.activated_by or v.created_by), escape(v.note or ""),
        )  # fmt: skip
    console.print(table)


@route_app.command("draft")
def route_draft(
    file: Annotated[
        Path | None, typer.Argument(help="The ruleset as JSON (default: read stdin).")
    ] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    note: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Save a ruleset as the scope's next version, a draft (not yet routing anything)."""
    from registry.db import get_database
    from registry.rulesets import create_draft

    text = file.read_text() if file is not None else sys.stdin.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"the ruleset is not JSON: {exc.msg} (line {exc.lineno})")
    with user_errors():
        view = create_draft(
            get_database(), document, tenant_id=tenant, actor=cli_actor(), note=note
        )
    console.print(
        f"draft [bold]v{view.version}[/] {view.id}; try it with `tender route explain --ruleset {view.id}`"
    )


@route_app.command("activate")
def route_activate(ruleset_id: Annotated[str, typer.Argument()]) -> None:
    """Make a version its scope's active one; workers follow within a second."""
    from registry.db import get_database
    from registry.rulesets import activate_ruleset

    with user_errors():
        view = activate_ruleset(get_database(), ruleset_id, actor=cli_actor())
    console.print(f"[green]active[/] v{view.version} for {escape(view.tenant_id or 'global')}")


@route_app.command("clear")
def route_clear(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """Retire the scope's active ruleset: route by priority and weight again."""
    from registry.db import get_database
    from registry.rulesets import clear_rules

    with user_errors():
        view = clear_rules(get_database(), tenant_id=tenant, actor=cli_actor())
    console.print("no active rules" if view is None else f"[yellow]retired[/] v{view.version}")


@route_app.command("explain")
def route_explain(
    payment: Annotated[str | None, typer.Option(help="An existing payment's id.")] = None,
    amount: Annotated[str | None, typer.Option(help='Major units, as "12.50".')] = None,
    currency: Annotated[str | None, typer.Option()] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    method: Annotated[str, typer.Option("--method")] = "card",
    country: Annotated[str | None, typer.Option(help="Billing country (ISO 3166).")] = None,
    brand: Annotated[str | None, typer.Option(help="Card brand.")] = None,
    bin_prefix: Annotated[str | None, typer.Option("--bin", help="Card BIN (up to 8).")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="key=value")] = None,
    ruleset: Annotated[str | None, typer.Option(help="Try this version (a draft).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The route a payment gets now, and why each instance is in it or left out."""
    from workers.payments.routing import explain, explain_payment, request_facts

    registry = _registry()
    with user_errors():
        if payment is not None:
            told = explain_payment(registry, payment, ruleset_id=ruleset)
        else:
            if amount is None or currency is None:
                fail("give --payment, or --amount and --currency")
                return
            metadata = dict(pair.partition("=")[::2] for pair in meta or [])
            facts = request_facts(
                amount=Decimal(amount), currency=currency, payment_method=method,
                billing_country=country, card_brand=brand, card_bin=bin_prefix,
                metadata=metadata,
            )  # fmt: skip
            told = explain(registry, facts, tenant_id=tenant, ruleset_id=ruleset)
    if as_json:
        _json(told.model_dump(mode="json"))
        return
    out = console
    out.print(f"[bold]{escape(told.reason)}[/]")
    if told.recorded is not None:
        out.print(f"recorded when it was routed: {escape(told.recorded.get('reason') or '')}")
    if not told.route:
        out.print("[red]no route[/]: no instance can take this payment")
    for n, hop in enumerate(told.route, 1):
        role = "primary" if n == 1 else "fallback"
        out.print(
            f"  {n}. {escape(hop.display_name)} ({hop.plugin_name}, {hop.instance_id}) {role}"
        )
    for left in told.left_out:
        out.print(f"  [dim]left out[/] {escape(left.display_name)}: {escape(left.reason)}")
    out.print(f"soft-decline retries: {'on' if told.retry_soft_declines else 'off'}")


experiments_app = typer.Typer(help="A/B experiments between instances.", no_args_is_help=True)


@experiments_app.command("start")
def experiments_start(
    name: Annotated[str, typer.Argument()],
    arm: Annotated[
        list[str], typer.Option("--arm", help="NAME=INSTANCE_ID:SHARE (percent), two to five")
    ],
    control: Annotated[str, typer.Option(help="Which arm is the control.")],
    tenant: Annotated[str | None, typer.Option()] = None,
    min_sample: Annotated[int, typer.Option(help="Ended payments per arm before a verdict.")] = 200,
    guardrail: Annotated[
        float, typer.Option(help="Stop a variant this many points below control.")
    ] = 2.0,
) -> None:
    """Start an experiment: each payment of the scope goes to its arm's instance first."""
    from registry.db import get_database
    from registry.experiments import create_experiment

    arms = []
    for text in arm:
        arm_name, _, rest = text.partition("=")
        instance, _, share = rest.rpartition(":")
        if not arm_name or not instance or not share.isdigit():
            fail(f"--arm expects NAME=INSTANCE_ID:SHARE, got {text!r}")
        arms.append({"name": arm_name, "instance": instance, "share": int(share)})
    spec = {
        "name": name, "arms": arms, "control": control, "min_sample": min_sample,
        "guardrail_points": guardrail,
    }  # fmt: skip
    with user_errors():
        made = create_experiment(get_database(), spec, tenant_id=tenant, actor=cli_actor())
    console.print(f"experiment [bold]{escape(made.name)}[/] running: {made.id}")


@experiments_app.command("list")
def experiments_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from registry.db import get_database
    from registry.experiments import list_experiments

    with user_errors():
        found = list_experiments(get_database())
    if as_json:
        _json([e.model_dump(mode="json") for e in found])
        return
    table = Table(title="Experiments")
    for column in ("id", "name", "scope", "status", "arms", "winner"):
        table.add_column(column, overflow="fold")
    for e in found:
        arms = ", ".join(f"{a['name']} {a['share']}%" for a in e.arms)
        table.add_row(
            str(e.id), escape(e.name), escape(e.tenant_id or "global"), e.status, arms,
            e.winner or "",
        )  # fmt: skip
    console.print(table)


@experiments_app.command("results")
def experiments_results(
    experiment_id: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts, approval rates with 95% intervals, difference to control, p95 latency."""
    from registry.db import get_database
    from workers.payments.experiments import experiment_results

    with user_errors():
        results = experiment_results(get_database(), experiment_id)
    if as_json:
        _json(results.model_dump(mode="json"))
        return
    e = results.experiment
    table = Table(title=f"{escape(e.name)} ({e.status}): {escape(results.summary)}")
    for column in ("arm", "share", "payments", "approved", "rate (95% CI)", "vs control",
                   "significant", "p95 latency"):  # fmt: skip
        table.add_column(column)
    for a in results.arms:
        rate = (
            f"{a.rate:.1%} ({a.interval[0]:.1%}-{a.interval[1]:.1%})"
            if a.rate is not None and a.interval
            else "-"
        )
        table.add_row(
            f"{escape(a.name)}{' (control)' if a.control else ''}", f"{a.share}%",
            str(a.payments), str(a.approved), rate,
            f"{a.difference_points:+.1f} pts" if a.difference_points is not None else "",
            {True: "yes", False: "no", None: "not yet"}[a.significant],
            f"{a.p95_latency_ms:.0f} ms" if a.p95_latency_ms is not None else "-",
        )  # fmt: skip
    console.print(table)
    if e.ended_reason:
        console.print(f"ended: {escape(e.ended_reason)}")


@experiments_app.command("stop")
def experiments_stop(
    experiment_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option()] = "stopped by an operator",
) -> None:
    from registry.db import get_database
    from registry.experiments import stop_experiment

    with user_errors():
        made = stop_experiment(get_database(), experiment_id, reason=reason, actor=cli_actor())
    console.print(f"[yellow]stopped[/] {escape(made.name)}")


@experiments_app.command("promote")
def experiments_promote(
    experiment_id: Annotated[str, typer.Argument()], arm: Annotated[str, typer.Argument()]
) -> None:
    """End the experiment with ARM the winner: its instance routes first from now on."""
    from registry.db import get_database
    from registry.experiments import promote_arm

    with user_errors():
        made = promote_arm(get_database(), experiment_id, arm, actor=cli_actor())
    console.print(f"[green]promoted[/] {escape(arm)} of {escape(made.name)}")
