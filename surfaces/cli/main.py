"""``tender``: the command line for operators, billing engineers and demos."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from config.settings import WORKER_CONCURRENCY
from surfaces.cli.errors import OperatorErrors, fail, set_debug, user_errors
from surfaces.cli.errors import cli_actor as _actor

console = Console()

app = typer.Typer(
    name="tender",
    help="Tender: payment-provider plugins on Celery workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OperatorErrors,
)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    set_debug(debug)


db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
plugins_app = typer.Typer(
    help="Provider instances: list, add, configure, activate, deactivate.", no_args_is_help=True
)
payments_app = typer.Typer(help="Read payments.", no_args_is_help=True)
events_app = typer.Typer(help="Result events.", no_args_is_help=True)
refunds_app = typer.Typer(help="Refunds the provider never answered.", no_args_is_help=True)
secrets_app = typer.Typer(help="Stored secrets: at-rest key rotation.", no_args_is_help=True)
tokens_app = typer.Typer(help="Operator tokens with scopes.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(plugins_app, name="plugins")
app.add_typer(payments_app, name="payments")
app.add_typer(events_app, name="events")
app.add_typer(refunds_app, name="refunds")
app.add_typer(secrets_app, name="secrets")
app.add_typer(tokens_app, name="tokens")
methods_app = typer.Typer(help="Customers' saved payment methods.", no_args_is_help=True)
app.add_typer(methods_app, name="methods")


@methods_app.command("import")
def methods_import(
    instance_id: Annotated[str, typer.Argument(help="The instance (account) that issued it.")],
    customer_ref: Annotated[str, typer.Argument(help="Billing's customer reference.")],
    provider_customer_id: Annotated[str | None, typer.Option(help="e.g. Stripe's cus_...")] = None,
    last4: Annotated[str | None, typer.Option()] = None,
    brand: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Save a method issued outside Tender; its token is read from stdin (never an
    argument: arguments show in process lists and shell history)."""
    from workers.payments.methods import import_payment_method

    token = sys.stdin.readline().strip()
    with user_errors():
        view = import_payment_method(
            instance_id, token, customer_ref, provider_customer_id=provider_customer_id,
            last4=last4, brand=brand, actor=_actor(),
        )  # fmt: skip
    console.print(f"payment method [bold]{view.id}[/] for {escape(view.customer_ref)}")


@methods_app.command("list")
def methods_list(
    customer_ref: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Saved methods (masked), newest first."""
    from workers.payments.methods import list_payment_methods

    if as_json:
        with user_errors():
            _json(
                [m.model_dump(mode="json") for m in list_payment_methods(customer_ref=customer_ref)]
            )
        return
    table = Table(title="Payment methods")
    for column in ("id", "customer", "provider", "card", "expires", "status"):
        table.add_column(column, overflow="fold")
    with user_errors():
        methods = list_payment_methods(customer_ref=customer_ref)
    for m in methods:
        card = f"{m.brand or ''} •••• {m.last4}" if m.last4 else (m.wallet_email or "")
        expires = f"{m.exp_month:02d}/{m.exp_year}" if m.exp_month and m.exp_year else ""
        table.add_row(m.id, escape(m.customer_ref), m.provider, escape(card), expires, m.status)
    console.print(table)


@methods_app.command("revoke")
def methods_revoke(method_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a method: it is never charged again."""
    from workers.payments.methods import revoke_payment_method

    with user_errors():
        revoke_payment_method(method_id, actor=_actor())
    console.print(f"[yellow]revoked[/] {method_id}")


def _parse_config(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values that parse as JSON (numbers, true, lists) are typed."""
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(f"--config expects key=value, got {pair!r}")
        try:
            value = json.loads(raw)
            if isinstance(value, float):
                value = raw  # keep decimals as text; floats never carry config amounts
        except json.JSONDecodeError:
            value = raw
        config[key.strip()] = value
    return config


def _registry() -> Any:
    from workers import runtime

    return runtime.registry()


MIN_ID_PREFIX = 4  # characters: one or two would switch whichever instance happens to match


def _instance_id(text: str) -> uuid.UUID:
    """A full instance id, or a unique prefix of one (as shown by `plugins list`)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    if len(text) < MIN_ID_PREFIX:
        fail(f"{text!r} is too short: give at least {MIN_ID_PREFIX} characters of the id")
    matches = [v.id for v in _registry().list_instances() if str(v.id).startswith(text)]
    if len(matches) != 1:
        fail(f"{text!r} matches {len(matches)} instances; give more of the id")
    return matches[0]


def _json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


# -- processes -----------------------------------------------------------------------


@app.command()
def worker(
    concurrency: Annotated[
        int, typer.Option(help="Payments in flight per process (threads).")
    ] = WORKER_CONCURRENCY,
    pool: Annotated[
        str, typer.Option(help="Celery pool: threads (default) or prefork.")
    ] = "threads",
    queues: Annotated[str, typer.Option(help="Queues to consume.")] = "payments,maintenance",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker (one process; run one per core to scale)."""
    from workers.core.app import app as celery_app

    _preflight(broker=True)
    celery_app.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
        ]
    )


@app.command()
def beat(loglevel: Annotated[str, typer.Option()] = "INFO") -> None:
    """Run Celery beat: health checks, reconcile and the outbox sweep. Run exactly one."""
    from workers.core.app import app as celery_app

    _preflight(broker=True)
    celery_app.start(["beat", f"--loglevel={loglevel}"])


@app.command()
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Serve the HTTP app: operator API, console, billing API and provider webhooks."""
    import uvicorn

    from config.logging import OncePerCondition, configure_logging
    from config.settings import get_settings
    from surfaces.http.app import create_app
    from surfaces.http.serving import server_options

    _preflight(broker=True)
    configure_logging()  # payment context on every line, secrets masked, JSON if configured
    served = create_app()  # here, so a bad setting is one line, not uvicorn's traceback
    console.print(f"Tender console: http://{host}:{port}/admin  (API docs: /docs)")
    quiet = OncePerCondition()  # one line per condition (e.g. out of descriptors), not per accept
    for name in ("asyncio", "uvicorn.error"):
        logging.getLogger(name).addFilter(quiet)
    uvicorn.run(served, host=host, port=port, **server_options(get_settings()))


def _preflight(*, broker: bool) -> None:
    """What the first payment would trip on, refused at start in one line (see errors.py):
    settings, the database and its schema, and the broker."""
    from config.settings import get_settings
    from registry.migrate import schema_is_current

    get_settings()
    if not schema_is_current():
        url = _safe_url(get_settings().resolved_database_url)
        fail(f"the database at {url} has no Tender schema, or an old one: run `tender db upgrade`")
    _registry().check_secrets_key()
    if broker:
        from workers.core.app import app as celery_app

        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)


# -- database ------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Create or migrate the schema (SQLite file or PostgreSQL)."""
    from config.settings import get_settings
    from registry.migrate import upgrade

    with user_errors():
        upgrade(revision=revision)
        url = get_settings().resolved_database_url
    console.print(f"[green]database at[/] {_safe_url(url)} [green]is at {revision}[/]")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command("audit")
def audit_list(
    target: Annotated[str | None, typer.Option(help="An instance or token id.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. instance.configure")] = None,
    actor: Annotated[str | None, typer.Option(help="A token's name, or cli:<user>.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Who changed which instance, token or key, when, before and after (secrets masked)."""
    from registry.audit import list_audit
    from registry.db import get_database

    with user_errors():
        rows = list_audit(get_database(), target=target, action=action, actor=actor, limit=limit)
    if as_json:
        _json([
            {"at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
             "before": r.before, "after": r.after}
            for r in rows
        ])  # fmt: skip
        return
    table = Table(title="Audit trail (newest first)")
    for column in ("at", "actor", "action", "target", "change"):
        table.add_column(column, overflow="fold")
    for r in rows:
        before, after = r.before or {}, r.after or {}
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        table.add_row(
            f"{r.at:%Y-%m-%d %H:%M:%S}", escape(r.actor), r.action, r.target[:8],
            escape(", ".join(changed)),
        )  # fmt: skip
    console.print(table)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="Who or what holds it (shown in the audit).")],
    scope: Annotated[list[str], typer.Option(help="read, pay, operate or admin (repeatable).")],
    expires_in_days: Annotated[float | None, typer.Option(help="Days until it expires.")] = None,
    tenant: Annotated[
        str | None,
        typer.Option(help="Bind it to this tenant (it sees and changes only that tenant's)."),
    ] = None,
) -> None:
    """Make a token; it is printed once and only its hash is stored. Without --tenant it
    is platform-wide."""
    from registry.db import get_database
    from registry.tokens import create_token

    with user_errors():
        token_id, token = create_token(
            get_database(),
            name,
            scope,
            expires_in_days * 86400 if expires_in_days else None,
            tenant_id=tenant,
            actor=_actor(),
        )
    bound = f", tenant {escape(tenant)}" if tenant else ", platform-wide"
    console.print(f"token {token_id} ({escape(name)}: {', '.join(scope)}{bound}); shown once:")
    print(token)


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a token now."""
    from registry.db import get_database
    from registry.tokens import revoke_token

    with user_errors():
        revoke_token(get_database(), uuid.UUID(token_id), actor=_actor())
    console.print(f"[yellow]revoked[/] {token_id}")


@tokens_app.command("list")
def tokens_list() -> None:
    """Tokens with their scopes and state (never the tokens themselves)."""
    from registry.db import get_database
    from registry.tokens import list_tokens

    table = Table(title="API tokens")
    for column in ("id", "name", "scopes", "tenant", "created", "expires", "state"):
        table.add_column(column, overflow="fold")
    with user_errors():
        rows = list_tokens(get_database())
    for row in rows:
        state = "revoked" if row.revoked_at else "active"
        table.add_row(
            str(row.id), escape(row.name), row.scopes, escape(row.tenant_id or "(platform)"),
            f"{row.created_at:%Y-%m-%d}",
            f"{row.expires_at:%Y-%m-%d}" if row.expires_at else "never", state,
        )  # fmt: skip
    console.print(table)


@secrets_app.command("check")
def secrets_check() -> None:
    """Resolve every secret reference (env:, vault:) of every instance now; say which fail.
    Values are never printed."""
    with user_errors():
        checks = _registry().check_references()
    table = Table(title="Secret references")
    for column in ("instance", "field", "reference", "result"):
        table.add_column(column, overflow="fold")
    for view, field, reference, error in checks:
        result = "[green]ok[/]" if error is None else f"[red]{escape(error)}[/]"
        table.add_row(escape(view.label), field, escape(reference), result)
    console.print(table if checks else "no secret references to check")
    if any(error is not None for *_, error in checks):
        raise typer.Exit(1)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the newest key (the first in TENDER_SECRETS_KEY),
    in one transaction; then the older keys can be dropped from the setting."""
    from registry.db import get_database
    from workers.ledger.rotation import rotate_stored_secrets

    with user_errors():
        done = rotate_stored_secrets(get_database(), _registry().box, actor=_actor())
    console.print(
        f"re-encrypted {done.fields} secret field(s) of {done.instances} instance(s) and "
        f"{done.payment_tokens} saved payment token(s) with the newest key"
    )


# -- plugins -------------------------------------------------------------------------


@plugins_app.command("new")
def plugins_new(
    name: Annotated[str, typer.Argument(help="The provider's name, as its entry point: mpesa")],
    directory: Annotated[Path, typer.Option("--dir", help="Where the package goes.")] = Path("."),
) -> None:
    """Scaffold a provider plugin as a package of its own, with its fake, harness and the
    kit's conformance suite (docs/writing-a-plugin.md)."""
    from surfaces.cli.scaffold import ScaffoldError, scaffold

    try:
        written = scaffold(name, directory)
    except ScaffoldError as exc:
        fail(str(exc))
    root = written[0].parent
    console.print(f"[green]created[/] {escape(str(root))}: {len(written)} files")
    console.print(
        f"next: cd {escape(str(root))} && pip install -e '.[dev]' && pytest --tender-conformance"
    )


@plugins_app.command("list")
def plugins_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's instances.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Provider instances in routing order (secrets masked)."""
    from registry.service import ANY

    with user_errors():
        views = _registry().list_instances(tenant_id=tenant if tenant is not None else ANY)
    if as_json:
        _json([v.model_dump(mode="json") for v in views])
        return
    # Six columns fit 80: names fold onto more lines, never cut; the plugin sits under the
    # name and health under status.
    table = Table(title="Provider instances")
    table.add_column("id", no_wrap=True)
    table.add_column("instance (plugin)", overflow="fold", min_width=16)
    table.add_column("tenant", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("prio/wt", overflow="fold")
    table.add_column("currencies", overflow="fold")
    for v in views:
        status = escape(v.status)
        if v.status == "error":
            status = f"[red]error[/]: {escape(v.status_message or '')}"
        table.add_row(
            str(v.id)[:8],
            f"{escape(v.display_name)}\n[dim]{escape(v.plugin_name)}[/]",
            escape(v.tenant_id or "(global)"),
            f"{status}\n{escape(v.health)}",
            f"{v.priority}/{v.weight}",
            ",".join(v.currencies) or "all",
        )
    console.print(table)


@plugins_app.command("add")
def plugins_add(
    plugin: Annotated[str, typer.Argument(help="Plugin name, e.g. paystack or sandbox.")],
    config: Annotated[
        list[str], typer.Option("--config", "-c", help="key=value; secrets as env:NAME.")
    ] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant id (default: global).")] = None,
    priority: Annotated[int, typer.Option(help="Lower routes first.")] = 100,
    weight: Annotated[int, typer.Option(help="Share among equal priority.")] = 1,
    currency: Annotated[list[str], typer.Option(help="Restrict to these currencies.")] = [],  # noqa: B006
    activate: Annotated[bool, typer.Option("--activate", help="Switch it on now.")] = False,
) -> None:
    """Add a provider instance. Its config is validated first; nothing is written if it is bad."""
    with user_errors():
        view = _registry().create_instance(
            plugin,
            _parse_config(config),
            tenant_id=tenant,
            display_name=name,
            priority=priority,
            weight=weight,
            currencies=currency,
            is_active=activate,
            actor=_actor(),
        )
    console.print(
        f"[green]added[/] {escape(view.label)} active={view.is_active} "
        f"config={escape(str(view.config))}"
    )


@plugins_app.command("configure")
def plugins_configure(
    instance: Annotated[str, typer.Argument(help="Instance id or unique prefix.")],
    config: Annotated[list[str], typer.Option("--config", "-c", help="key=value to change.")] = [],  # noqa: B006
) -> None:
    """Change config fields (others, including stored secrets, are kept)."""
    with user_errors():
        view = _registry().update_config(
            _instance_id(instance), _parse_config(config), actor=_actor()
        )
    console.print(f"[green]configured[/] {escape(view.label)} config={escape(str(view.config))}")


@plugins_app.command("activate")
def plugins_activate(
    instance: Annotated[str, typer.Argument(help="Instance id or unique prefix.")],
    exclusive: Annotated[
        bool, typer.Option("--exclusive", help="Switch its siblings off in the same change.")
    ] = False,
) -> None:
    """Switch an instance on; workers follow within a second."""
    with user_errors():
        view = _registry().activate(_instance_id(instance), exclusive=exclusive, actor=_actor())
    console.print(f"[green]activated[/] {escape(view.label)}")


@plugins_app.command("deactivate")
def plugins_deactivate(
    instance: Annotated[str, typer.Argument(help="Instance id or unique prefix.")],
) -> None:
    """Switch an instance off; workers stop routing to it within a second."""
    with user_errors():
        view = _registry().deactivate(_instance_id(instance), actor=_actor())
    console.print(f"[yellow]deactivated[/] {escape(view.label)}")


# -- payments ------------------------------------------------------------------------


@app.command()
def pay(
    order_id: Annotated[str, typer.Argument()],
    amount: Annotated[str, typer.Argument(help="Major units, e.g. 1500.50")],
    currency: Annotated[str, typer.Argument(help="ISO 4217 code, e.g. NGN")],
    email: Annotated[str, typer.Argument(help="Customer email")],
    method: Annotated[
        str, typer.Option(help="card, bank_transfer, ussd, mobile_money, bank")
    ] = "card",
    tenant: Annotated[str | None, typer.Option()] = None,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key (default: order:<order_id>).")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for an outcome (0: don't).")] = 0.0,
    payment_method_id: Annotated[
        str | None,
        typer.Option(help="Charge a saved payment method (pm_...), through its issuer only."),
    ] = None,
) -> None:
    """Request a payment (enqueue it) and print its receipt."""
    from workers.payments.client import get_payment, request_payment

    with user_errors():
        receipt = request_payment(
            order_id,
            Decimal(amount) if _decimal(amount) else amount,
            currency,
            email,
            payment_method=method,
            tenant_id=tenant,
            idempotency_key=key,
            payment_method_id=payment_method_id,
        )
    note = "" if receipt.created else " (an earlier request with this key)"
    console.print(f"payment [bold]{receipt.payment_id}[/] {receipt.status.value}{note}")
    if wait > 0:
        view = _wait_for(lambda: get_payment(receipt.payment_id), wait)
        _print_payment(view)
        if view.status.value == "failed":
            raise typer.Exit(2)


def _decimal(text: str) -> bool:
    try:
        Decimal(text)
        return True
    except ArithmeticError:
        return False


def _wait_for(read: Callable[[], Any], timeout_s: float) -> Any:
    import time

    deadline = time.monotonic() + timeout_s
    view = read()
    while view.status.value in {"requested", "processing"} and time.monotonic() < deadline:
        time.sleep(0.1)
        view = read()
    return view


def _print_payment(view: Any) -> None:
    table = Table(show_header=False, title=f"payment {view.id}")
    for field in (
        "status",
        "order_id",
        "tenant_id",
        "amount",
        "currency",
        "provider",
        "instance_id",
        "provider_reference",
        "authorization_url",
        "error_code",
        "error",
        "refunded_minor",
        "created_at",
        "updated_at",
    ):
        value = getattr(view, field)
        if value is not None:
            table.add_row(field, escape(str(value)))
    console.print(table)
    if view.attempts:
        attempts = Table(title="attempts")
        for column in ("operation", "plugin", "outcome", "latency ms", "message"):
            attempts.add_column(column)
        for a in view.attempts:
            attempts.add_row(
                a.operation,
                escape(a.plugin_name),
                a.outcome,
                f"{a.latency_ms:.1f}",
                escape(a.message or ""),
            )
        console.print(attempts)


@payments_app.command("show")
def payments_show(
    payment_id: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A payment's state, provider and attempts."""
    from workers.payments.client import get_payment

    with user_errors():
        view = get_payment(payment_id)
    if as_json:
        _json(view.model_dump(mode="json"))
    else:
        _print_payment(view)


@refunds_app.command("settle")
def refunds_settle(
    refund_id: Annotated[str, typer.Argument(help="The refund's id (the alert names it).")],
    succeeded: Annotated[
        bool,
        typer.Option(
            "--succeeded/--failed",
            help="What the provider's dashboard shows: the money went back, or it did not.",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why, for the ledger (who checked what).")],
    provider_refund_id: Annotated[
        str | None,
        typer.Option(help="The provider's id of the refund (required with --succeeded)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Settle an open refund by hand, after checking it at the provider: --succeeded if it
    shows processed there, --failed only if the provider has no such refund."""
    from workers.payments.refunds import settle_refund_by_operator

    with user_errors():
        view = settle_refund_by_operator(
            refund_id, succeeded, reason, provider_refund_id=provider_refund_id, actor=_actor()
        )
    if as_json:
        _json(view.model_dump(mode="json"))
    else:
        console.print(
            f"refund {view.id}: [bold]{view.status.value}[/] ({view.amount} {view.currency}); "
            f"payment {view.payment_id} is {view.payment_status.value}",
            highlight=False,
        )


# -- events --------------------------------------------------------------------------


@events_app.command("tail")
def events_tail(
    binding: Annotated[str, typer.Option(help="Routing-key pattern, e.g. 'payment.*'.")] = "#",
    tenant: Annotated[
        str | None,
        typer.Option(help="Only this tenant's events (needs TENDER_EVENT_ROUTING=tenant)."),
    ] = None,
    count: Annotated[int, typer.Option(help="Stop after this many events (0: forever).")] = 0,
    timeout: Annotated[
        float, typer.Option(help="Stop after this many idle seconds (0: never).")
    ] = 0.0,
) -> None:
    """Print result events as they are published (JSON lines)."""
    from config.settings import get_settings
    from workers.events.relay import tenant_word
    from workers.events.stream import tail

    if tenant is not None:
        if get_settings().event_routing != "tenant":
            fail("--tenant needs TENDER_EVENT_ROUTING=tenant (events are routed by type)")
        binding = f"{tenant_word(tenant)}.{binding}"
    with user_errors():
        for n, event in enumerate(tail(binding, idle_timeout_s=timeout or None), start=1):
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            if count and n >= count:
                break


@app.command()
def demo(
    payments: Annotated[int, typer.Option(help="How many payments to submit.")] = 12,
    provider: Annotated[
        str,
        typer.Option(
            help="The standby the demo swaps to: sandbox, or stripe (test mode: set "
            "STRIPE_SECRET_KEY=sk_test_...)."
        ),
    ] = "sandbox",
    stripe_base_url: Annotated[
        str, typer.Option(help="Stripe's API address (a local stand-in's for offline runs).")
    ] = "https://api.stripe.com",
) -> None:
    """Run the whole flow on this machine: worker, two instances, a hot swap, events."""
    from surfaces.cli.demo import run_demo

    if provider not in ("sandbox", "stripe"):
        fail(f"--provider must be sandbox or stripe, not {provider!r}")
    with user_errors():
        ok = run_demo(
            console, payments=payments, provider=provider, stripe_base_url=stripe_base_url
        )
    raise typer.Exit(0 if ok else 1)


def _mount_health() -> None:
    try:
        from surfaces.cli.health import health_app
    except ImportError:  # pragma: no cover - health CLI not installed
        return
    app.add_typer(health_app, name="health")


_mount_health()


def _mount_routing() -> None:
    from surfaces.cli.routing import experiments_app, route_app

    app.add_typer(route_app, name="route")
    app.add_typer(experiments_app, name="experiments")


_mount_routing()


def main() -> None:  # pragma: no cover - console script
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
