"""``tender demo``: the whole flow on one machine, with nothing running beforehand.

Starts a real Celery worker process, registers two sandbox instances (primary and
backup) for a demo tenant of its own, submits a batch of payments (one duplicate
request, one declined card), hot-swaps the active instance mid-run, and shows a
live table of payments beside the event stream. Exits 0 only if every check holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

SETTLED = {"succeeded", "failed", "pending", "unknown"}
STATUS_STYLE = {"succeeded": "green", "failed": "red", "pending": "yellow", "unknown": "magenta"}


@dataclass
class DemoRun:
    tenant: str
    book: str
    primary: Any
    backup: Any
    orders: list[tuple[str, Decimal, str, str]] = field(default_factory=list)
    receipts: dict[str, Any] = field(default_factory=dict)  # order -> receipt
    views: dict[str, Any] = field(default_factory=dict)  # order -> PaymentView
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicate_same_payment: bool = False
    swapped_after: int = 0


def _prepare_environment(console: Console) -> Path:
    from config.settings import get_settings, reset_settings
    from registry.db import forget_databases
    from workers import runtime
    from workers.core.app import reconfigure

    external = os.environ.get("TENDER_DATABASE_URL") or os.environ.get("TENDER_BROKER_URL")
    if not external and "TENDER_DATA_DIR" not in os.environ:
        os.environ["TENDER_DATA_DIR"] = tempfile.mkdtemp(prefix="tender-demo-")
    reset_settings()
    forget_databases()
    runtime.reset()
    reconfigure()
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    where = (
        "embedded SQLite + filesystem broker"
        if not external
        else "the configured database and broker"
    )
    console.print(f"[bold]Tender demo[/] using {where}; data in {data_dir}")
    return data_dir


def _orders(count: int) -> list[tuple[str, Decimal, str, str]]:
    """(order id, amount, currency, email): mixed currencies, one declined card."""
    catalogue = [
        (Decimal("1500.00"), "NGN"),
        (Decimal("249.99"), "GHS"),
        (Decimal("1200"), "JPY"),
        (Decimal("12.340"), "KWD"),  # three decimals; Stripe takes them in steps of 0.010
        (Decimal("99.50"), "USD"),
        (Decimal("7800.25"), "NGN"),
    ]
    orders = []
    for i in range(max(count, 4)):
        amount, currency = catalogue[i % len(catalogue)]
        email = "decline@example.com" if i == 2 else f"customer{i}@example.com"
        orders.append((f"order-{i + 1:03d}", amount, currency, email))
    return orders


def _start_worker(data_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = data_dir / "demo-worker.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.core.app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "8",
            "--queues",
            "payments,maintenance",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "--hostname",
            f"demo-{uuid.uuid4().hex[:6]}@%h",
        ],
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, log_path


def _render(run: DemoRun) -> Group:
    table = Table(title=f"payments (tenant {run.tenant})", expand=True)
    for column in ("order", "amount", "status", "served by", "note"):
        table.add_column(column)
    names = {run.primary.id: run.primary.display_name, run.backup.id: run.backup.display_name}
    for order_id, amount, currency, _email in run.orders:
        view = run.views.get(order_id)
        status = view.status.value if view else "…"
        style = STATUS_STYLE.get(status, "white")
        served = names.get(view.instance_id, "") if view and view.instance_id else ""
        note = (view.error or "") if view else ""
        table.add_row(order_id, f"{amount} {currency}", f"[{style}]{status}[/]", served, note)
    lines = [
        f"{e['type']:<18} {e.get('order_id', '')}  {e.get('status', '')}  event_id={str(e['event_id'])[:8]}"
        for e in run.events[-12:]
    ]
    events = Panel("\n".join(lines) or "(waiting for events)", title="tender.events", expand=True)
    return Group(table, events)


def _poll(run: DemoRun, tail: Any) -> None:
    from workers.payments.client import get_payment

    for order_id, receipt in run.receipts.items():
        if order_id not in run.views or run.views[order_id].status.value not in SETTLED:
            run.views[order_id] = get_payment(receipt.payment_id)
    while (event := tail.read(timeout_s=0.05)) is not None:
        if event.get("tenant_id") == run.tenant:
            run.events.append(event)


STRIPE_KEY_VARIABLE = "STRIPE_SECRET_KEY"


def stripe_backup_config(base_url: str) -> dict[str, Any]:
    """The demo's Stripe instance: a test-mode key by reference (never stored), Stripe's
    address or a local stand-in's."""
    key = os.environ.get(STRIPE_KEY_VARIABLE, "")
    if not key.startswith("sk_test_"):
        raise ValueError(
            f"{STRIPE_KEY_VARIABLE} must hold a Stripe test-mode key (sk_test_...): "
            "the demo charges test cards, never live ones"
        )
    return {
        "secret_key": f"env:{STRIPE_KEY_VARIABLE}",
        "webhook_secret": "whsec_demo_unused_here",
        "base_url": base_url,
    }


def run_demo(
    console: Console,
    payments: int = 12,
    provider: str = "sandbox",
    stripe_base_url: str = "https://api.stripe.com",
) -> bool:
    from providers.sandbox import charge_book
    from registry.migrate import upgrade
    from workers import runtime
    from workers.events.stream import EventTail
    from workers.payments.client import request_payment

    data_dir = _prepare_environment(console)
    upgrade()
    tenant = f"demo-{uuid.uuid4().hex[:6]}"
    book = str(data_dir / f"{tenant}-charges.db")
    registry = runtime.registry()
    primary = registry.create_instance(
        "sandbox",
        {"latency_ms": 150, "charge_book": book, "api_key": "sk_demo_primary_secret"},
        tenant_id=tenant,
        display_name="sandbox-primary",
        priority=1,
        is_active=True,
    )
    backup_plugin, backup_config = (
        ("stripe", stripe_backup_config(stripe_base_url))
        if provider == "stripe"
        else (
            "sandbox",
            {"latency_ms": 80, "charge_book": book, "api_key": "sk_demo_backup_secret"},
        )
    )
    backup = registry.create_instance(
        backup_plugin,
        backup_config,
        tenant_id=tenant,
        display_name=f"{backup_plugin}-backup",
        priority=2,
        is_active=False,
    )
    console.print(
        f"registered {primary.label} (active) and {backup.label} (standby); secrets stored as {primary.config['api_key']}"
    )
    run = DemoRun(tenant, book, primary, backup, orders=_orders(payments))
    tail = EventTail("payment.*")
    worker, log_path = _start_worker(data_dir)
    half = len(run.orders) // 2
    try:
        with Live(_render(run), console=console, refresh_per_second=8, transient=False) as live:
            for index, (order_id, amount, currency, email) in enumerate(run.orders):
                if index == half:
                    # Wait for the first half, then switch primary -> backup while running.
                    _wait(
                        run,
                        tail,
                        live,
                        lambda: all(
                            run.views.get(o) and run.views[o].status.value in SETTLED
                            for o in run.receipts
                        ),
                        timeout_s=60,
                    )
                    registry.activate(backup.id, exclusive=True)
                    run.swapped_after = index
                    time.sleep(
                        1.0
                    )  # workers notice within registry_poll_s; one second is the promise
                # A saved test card: the sandbox ignores it, Stripe charges it at once.
                token = "pm_card_visa" if provider == "stripe" else None
                run.receipts[order_id] = request_payment(
                    order_id, amount, currency, email, tenant_id=tenant, payment_token=token
                )
                if index == 1:  # billing retries the same request: same payment, no second charge
                    again = request_payment(
                        order_id, amount, currency, email, tenant_id=tenant, payment_token=token
                    )
                    run.duplicate_same_payment = (
                        again.payment_id == run.receipts[order_id].payment_id and not again.created
                    )
                _poll(run, tail)
                live.update(_render(run))
            _wait(
                run,
                tail,
                live,
                lambda: (
                    len(run.views) == len(run.orders)
                    and all(v.status.value in SETTLED for v in run.views.values())
                    and len({e["payment_id"] for e in run.events}) >= len(run.orders)
                ),
                timeout_s=60,
            )
    finally:
        tail.close()
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    console.print()
    ok = _summary(console, run, charge_book(book), log_path)
    console.print(PAYSTACK_NEXT)
    return ok


PAYSTACK_NEXT = Panel(
    "\n".join(
        [
            "Keys stay out of the database: env references, resolved per process.",
            "",
            "  export PAYSTACK_SECRET_KEY=sk_live_...",
            "  export PAYSTACK_PUBLIC_KEY=pk_live_...",
            "  tender plugins add paystack --name paystack-ng \\",
            "    --currency NGN --activate \\",
            "    -c secret_key=env:PAYSTACK_SECRET_KEY \\",
            "    -c public_key=env:PAYSTACK_PUBLIC_KEY",
            "",
            "Or in code: PluginRegistry().create_instance(",
            "    'paystack', {'secret_key': 'env:PAYSTACK_SECRET_KEY', ...})",
            "",
            "Webhooks: run `tender api`, give Paystack",
            "  https://<your-host>/webhooks/paystack",
        ]
    ),
    title="Next: Paystack",
    expand=False,
)


def _wait(run: DemoRun, tail: Any, live: Live, done: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _poll(run, tail)
        live.update(_render(run))
        if done():
            return
        time.sleep(0.1)


def _charged_once(run: DemoRun, book: Any) -> bool:
    """The sandbox's own books for the payments it took; for Stripe, one distinct
    PaymentIntent per payment it took (its books are Stripe's)."""
    at_backup = [v for v in run.views.values() if v.instance_id == run.backup.id]
    if run.backup.plugin_name != "stripe":
        return book.count() == len(run.orders) and book.refused_repeats() == 0
    intents = {v.provider_transaction_id for v in at_backup}
    return (
        book.count() == len(run.orders) - len(at_backup)
        and book.refused_repeats() == 0
        and len(intents) == len(at_backup)
        and all(i and i.startswith("pi_") for i in intents)
    )


def _summary(console: Console, run: DemoRun, book: Any, log_path: Path) -> bool:
    statuses = Counter(v.status.value for v in run.views.values())
    after_swap = [run.views[o[0]] for o in run.orders[run.swapped_after :] if o[0] in run.views]
    declined = run.views.get(run.orders[2][0])
    checks = {
        "every payment settled": all(v.status.value in SETTLED for v in run.views.values())
        and len(run.views) == len(run.orders),
        "duplicate request returned the same payment": run.duplicate_same_payment,
        "declined card failed with a reason": bool(
            declined and declined.status.value == "failed" and declined.error
        ),
        "after the hot swap, payments went to the backup": bool(after_swap)
        and all(v.instance_id == run.backup.id for v in after_swap),
        "each payment reached a provider exactly once": _charged_once(run, book),
        "one result event per payment": len({e["payment_id"] for e in run.events})
        == len(run.orders)
        == len(run.events),
    }
    table = Table(title="summary", show_header=False)
    table.add_row("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    table.add_row("provider charges (charge book)", str(book.count()))
    table.add_row("events received", str(len(run.events)))
    for name, ok in checks.items():
        table.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(table)
    ok = all(checks.values())
    if not ok:
        console.print(f"[red]demo checks failed[/]; worker log: {log_path}")
    else:
        console.print(
            "[bold green]demo complete[/]: at most once, hot swap without restart, events for every payment."
        )
    return ok
