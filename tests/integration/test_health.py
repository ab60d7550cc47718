"""Health monitoring end to end: a real ``celery beat`` process schedules
``tender.health_check_all`` every second on Redis; the session's real worker runs it
against PostgreSQL; alerts reach a local webhook receiver and a local SMTP server.

The worker runs in this process, so the alert settings are set in this process's
environment (and the settings cache reset); the beat process gets the interval.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from config.settings import reset_settings
from registry.db import get_database
from registry.instances import InstanceView
from registry.models import PluginHealth
from tests.integration.conftest import EventTap, wait_for
from tests.unit.test_alerts import Mailbox, Receiver, free_port
from workers import runtime
from workers.payments.client import get_payment, request_payment

INTERVAL_S = 1.0


class Beat:
    """A real ``celery beat`` OS process with its own schedule file."""

    def __init__(self, env: dict[str, str], schedule: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.core.app",
                "beat",
                "--schedule",
                str(schedule),
                "--max-interval",
                "1",
                "--loglevel",
                "INFO",
            ],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> str:
        self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output or ""


@dataclass
class Ops:
    """What an operator would receive: webhook posts and emails."""

    receiver: Receiver
    mailbox: Mailbox

    def posts_about(self, view: InstanceView) -> list[str]:
        # the title line names the instance the alert is about
        return [b["text"] for b in self.receiver.bodies if view.label in b["text"].split("\n")[0]]

    def mails_about(self, view: InstanceView) -> list[str]:
        return [content for _, _, content in self.mailbox.messages if view.label in content]


@pytest.fixture
def ops(integration_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Ops]:
    receiver = Receiver()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    for name, value in {
        "TENDER_HEALTH_INTERVAL_S": str(INTERVAL_S),
        "TENDER_HEALTH_CHECK_TIMEOUT_S": "0.5",  # under the interval: runs stay short
        "TENDER_ALERT_WEBHOOK_URL": receiver.url,
        "TENDER_ALERT_SMTP_HOST": "127.0.0.1",
        "TENDER_ALERT_SMTP_PORT": str(smtp.port),
        "TENDER_ALERT_EMAIL_FROM": "tender@ops.test",
        "TENDER_ALERT_EMAIL_TO": '["oncall@ops.test"]',
    }.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    yield Ops(receiver, mailbox)
    monkeypatch.undo()
    reset_settings()
    smtp.stop()
    receiver.close()


@pytest.fixture
def beat(worker: Any, ops: Ops, integration_env: dict[str, str], tmp_path: Path) -> Iterator[Beat]:
    process = Beat(
        {**integration_env, "TENDER_HEALTH_INTERVAL_S": str(INTERVAL_S)}, tmp_path / "schedule"
    )
    yield process
    output = process.stop()
    assert "Sending due task health-check-all" in output, output[-2000:]


@pytest.fixture
def created() -> Iterator[list[InstanceView]]:
    """Instances a test creates, retired afterwards so later health runs skip them."""
    views: list[InstanceView] = []
    yield views
    for view in views:
        runtime.registry().retire(view.id)


def sandbox(
    created: list[InstanceView], tenant: str, book: str, name: str, priority: int, **config: Any
) -> InstanceView:
    view = runtime.registry().create_instance(
        "sandbox",
        {"charge_book": book, **config},
        tenant_id=tenant,
        display_name=name,
        priority=priority,
        currencies=["NGN"],
        is_active=True,
    )
    created.append(view)
    return view


def health_of(view: InstanceView) -> str:
    return runtime.registry().get_instance(view.id).health


def route_for(tenant: str) -> list[InstanceView]:
    """The NGN route as the worker's registry sees it (same process; cache <= poll_s old)."""
    return runtime.registry().resolve(tenant_id=tenant, currency="NGN", idempotency_key="k")


def checks_of(view: InstanceView) -> list[PluginHealth]:
    with get_database().sessions() as session:
        return list(
            session.scalars(
                select(PluginHealth)
                .where(PluginHealth.instance_id == view.id)
                .order_by(PluginHealth.checked_at)
            )
        )


def test_real_beat_schedules_health_runs_recorded_in_plugin_health(
    beat: Beat, tenant: str, book_path: str, created: list[InstanceView]
) -> None:
    view = sandbox(created, tenant, book_path, "scheduled", 1)
    rows = wait_for(lambda: (r := checks_of(view)) and len(r) >= 3 and r, timeout_s=10)
    assert {r.status for r in rows} == {"healthy"}
    gaps = [(b.checked_at - a.checked_at).total_seconds() for a, b in itertools.pairwise(rows)]
    assert all(gap >= INTERVAL_S / 2 for gap in gaps), gaps  # never doubled
    assert health_of(view) == "healthy"


def test_outage_is_detected_alerted_once_routed_around_and_recovery_alerted_once(
    beat: Beat,
    ops: Ops,
    tenant: str,
    book_path: str,
    created: list[InstanceView],
    events: EventTap,
) -> None:
    primary = sandbox(created, tenant, book_path, "primary", 1)
    backup = sandbox(created, tenant, book_path, "backup", 2)
    wait_for(lambda: health_of(primary) == "healthy", timeout_s=5)

    runtime.registry().update_config(primary.id, {"outage": True})  # its server goes down
    # two failed checks open the circuit; how soon is the schedule's business, not a bound
    wait_for(lambda: health_of(primary) == "unhealthy", timeout_s=10 * INTERVAL_S + 10)

    [post] = wait_for(lambda: ops.posts_about(primary), timeout_s=5)
    assert f"Provider unhealthy: {primary.label}" in post
    assert f"for tenant {tenant} is unhealthy since" in post
    assert "sandbox outage switch is on" in post
    assert f"payments in NGN now go to {backup.label}" in post
    [mail] = wait_for(lambda: ops.mails_about(primary), timeout_s=5)
    assert f"Subject: [tender warning] Provider unhealthy: {primary.label}" in mail

    wait_for(lambda: [v.id for v in route_for(tenant)] == [backup.id], timeout_s=2)
    receipt = request_payment("ord-h1", "12.50", "NGN", "ada@example.com", tenant_id=tenant)
    payment = wait_for(lambda: (p := get_payment(receipt.payment_id)).status == "succeeded" and p)
    assert payment.instance_id == backup.id
    assert [a.instance_id for a in payment.attempts] == [backup.id]  # primary not even tried

    checked = len(checks_of(primary))
    wait_for(lambda: len(checks_of(primary)) >= checked + 3, timeout_s=30)  # the outage holds
    assert len(ops.posts_about(primary)) == 1 and len(ops.mails_about(primary)) == 1

    runtime.registry().update_config(primary.id, {"outage": False})
    wait_for(lambda: health_of(primary) == "healthy", timeout_s=2 * INTERVAL_S + 3)
    wait_for(lambda: len(ops.posts_about(primary)) == 2, timeout_s=5)
    wait_for(lambda: len(ops.mails_about(primary)) == 2, timeout_s=5)
    checked = len(checks_of(primary))
    wait_for(lambda: len(checks_of(primary)) >= checked + 2, timeout_s=30)  # healthy checks: quiet
    posts = ops.posts_about(primary)
    assert len(posts) == 2 and f"Provider recovered: {primary.label}" in posts[1]
    assert f"payments in NGN go to {primary.label}" in posts[1]
    assert len(ops.mails_about(primary)) == 2

    def about_primary(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in seen if e.get("instance_id") == str(primary.id)]

    seen = events.collect(lambda s: len(about_primary(s)) >= 5, timeout_s=10)
    changes = [
        (e["previous"], e["current"])
        for e in about_primary(seen)
        if e["type"] == "provider.health_changed"
    ]
    assert changes == [("unknown", "healthy"), ("healthy", "unhealthy"), ("unhealthy", "healthy")]
    raised = [e for e in about_primary(seen) if e["type"] == "alert.raised"]
    assert [e["severity"] for e in raised] == ["warning", "info"]


def test_last_instance_down_is_a_critical_alert_and_payments_fail_clearly(
    beat: Beat, ops: Ops, tenant: str, book_path: str, created: list[InstanceView]
) -> None:
    only = sandbox(created, tenant, book_path, "only", 1)
    wait_for(lambda: health_of(only) == "healthy", timeout_s=5)
    runtime.registry().update_config(only.id, {"outage": True})
    [post] = wait_for(lambda: ops.posts_about(only), timeout_s=2 * INTERVAL_S + 5)
    assert f"CRITICAL: payments in NGN for tenant {tenant} will fail" in post
    assert "payments in NGN will FAIL: no usable provider is left" in post
    [mail] = wait_for(lambda: ops.mails_about(only), timeout_s=5)
    assert "Subject: [tender critical]" in mail

    wait_for(lambda: route_for(tenant) == [], timeout_s=2)
    receipt = request_payment("ord-h2", "3", "NGN", "ada@example.com", tenant_id=tenant)
    payment = wait_for(lambda: (p := get_payment(receipt.payment_id)).status == "failed" and p)
    assert payment.error_code == "no_route" and payment.attempts == []


def test_a_rejected_key_marks_error_and_alerts_without_the_key(
    beat: Beat, ops: Ops, tenant: str, book_path: str, created: list[InstanceView]
) -> None:
    from tests.unit.test_health import SECRET, ScriptedProvider

    runtime.registry().register_plugin("scripted", ScriptedProvider)
    backup = sandbox(created, tenant, book_path, "backup", 2)
    view = runtime.registry().create_instance(
        "scripted",
        {"behaviour": "reject"},
        tenant_id=tenant,
        display_name="keys",
        priority=1,
        currencies=["NGN"],
        is_active=True,
    )
    created.append(view)
    wait_for(lambda: runtime.registry().get_instance(view.id).status == "error", timeout_s=5)
    [post] = wait_for(lambda: ops.posts_about(view), timeout_s=5)
    assert f"Provider configuration rejected: {view.label}" in post
    assert "Invalid key ***" in post and f"payments in NGN now go to {backup.label}" in post
    [mail] = wait_for(lambda: ops.mails_about(view), timeout_s=5)
    assert SECRET not in post and SECRET not in mail
    assert SECRET not in (runtime.registry().get_instance(view.id).status_message or "")
