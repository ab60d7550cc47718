"""Alerts: when (pure transition and cooldown rules), what (text computed from routing,
critical when no route is left), and where (log, webhook, email; retried, never raising)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from config.settings import Settings
from providers.base import utcnow
from registry.instances import InstanceView
from workers.monitoring.alerts import (
    Alert,
    AlertDecision,
    AlertKind,
    AlertMemory,
    Condition,
    EmailSink,
    LogSink,
    WebhookSink,
    compose_alert,
    condition_of,
    decide_alert,
    deliver,
    deliver_all,
    routing_effect,
    sinks_from_settings,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=utcnow().tzinfo)
COOLDOWN_S = 3600.0
DOWN = AlertMemory(Condition.UNHEALTHY, since=T0, alerted_at=T0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- when: transitions and cooldown ---------------------------------------------------


def test_an_instance_going_unhealthy_alerts_once_and_remembers_since() -> None:
    decision = decide_alert(None, Condition.UNHEALTHY, at(10), COOLDOWN_S, since=at(5))
    assert decision.kind is AlertKind.DOWN
    assert decision.memory == AlertMemory(Condition.UNHEALTHY, since=at(5), alerted_at=at(10))


def test_nothing_while_the_state_holds_within_the_cooldown() -> None:
    for seconds in (30, 600, COOLDOWN_S - 1):
        decision = decide_alert(DOWN, Condition.UNHEALTHY, at(seconds), COOLDOWN_S)
        assert decision.kind is None and decision.memory == DOWN


def test_a_reminder_after_the_cooldown_then_quiet_again() -> None:
    reminded = decide_alert(DOWN, Condition.UNHEALTHY, at(COOLDOWN_S), COOLDOWN_S)
    assert reminded.kind is AlertKind.REMINDER
    assert reminded.memory == AlertMemory(
        Condition.UNHEALTHY, since=T0, alerted_at=at(COOLDOWN_S), reminders=1
    )
    assert reminded.memory is not None
    quiet = decide_alert(reminded.memory, Condition.UNHEALTHY, at(COOLDOWN_S + 60), COOLDOWN_S)
    assert quiet.kind is None


def test_recovery_alerts_once_and_forgets() -> None:
    recovered = decide_alert(DOWN, Condition.OK, at(90), COOLDOWN_S)
    assert recovered == AlertDecision(AlertKind.RECOVERED, None)
    assert decide_alert(None, Condition.OK, at(120), COOLDOWN_S).kind is None


def test_healthy_with_nothing_alerted_stays_silent() -> None:
    assert decide_alert(None, Condition.OK, T0, COOLDOWN_S) == AlertDecision(None, None)


def test_a_new_kind_of_problem_is_a_new_alert() -> None:
    decision = decide_alert(DOWN, Condition.ERROR, at(60), COOLDOWN_S)
    assert decision.kind is AlertKind.DOWN
    assert decision.memory is not None and decision.memory.condition is Condition.ERROR


def test_switching_an_instance_off_forgets_it_without_a_recovery_alert() -> None:
    decision = decide_alert(DOWN, None, at(60), COOLDOWN_S)
    assert decision.kind is None and decision.memory is None


@pytest.mark.parametrize(
    ("is_active", "status", "health", "expected"),
    [
        (True, "active", "healthy", Condition.OK),
        (True, "active", "degraded", Condition.OK),
        (True, "active", "unknown", Condition.OK),
        (True, "active", "unhealthy", Condition.UNHEALTHY),
        (True, "error", "healthy", Condition.ERROR),
        (True, "error", "unhealthy", Condition.ERROR),
        (False, "inactive", "unhealthy", None),
        (False, "error", "healthy", None),
    ],
)
def test_condition_of_an_instance(
    is_active: bool, status: str, health: str, expected: Condition | None
) -> None:
    assert condition_of(is_active, status, health) is expected


# -- what: the text, from routing -------------------------------------------------------

SUPPORTED = {"sandbox": {"NGN", "GHS", "USD"}, "naira": {"NGN"}}


def supports(plugin_name: str, currency: str) -> bool:
    return currency in SUPPORTED.get(plugin_name, set())


def instance(name: str, **overrides: Any) -> InstanceView:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": "acme",
        "plugin_name": "sandbox",
        "display_name": name,
        "provider_type": "payment",
        "status": "active",
        "status_message": None,
        "is_active": True,
        "config": {},
        "priority": 100,
        "weight": 1,
        "currencies": [],
        "health": "healthy",
        "health_since": T0,
        "health_message": "ok",
        "health_latency_ms": 12.0,
        "consecutive_failures": 0,
        "last_checked_at": T0,
        "created_at": T0,
        "updated_at": T0,
        "version": 1,
    }
    return InstanceView(**{**fields, **overrides})


def down(view: InstanceView) -> InstanceView:
    return view.model_copy(
        update={
            "health": "unhealthy",
            "health_message": "connection refused",
            "consecutive_failures": 2,
        }
    )


def alert_for(view: InstanceView, others: list[InstanceView], currencies: list[str]) -> Alert:
    effect = routing_effect(view, [view, *others], currencies, supports)
    return compose_alert(AlertKind.DOWN, view, Condition.UNHEALTHY, DOWN, effect, at(60))


def test_the_alert_says_who_what_since_when_and_where_payments_go_now() -> None:
    primary = down(instance("Paystack main", priority=1, currencies=["NGN"]))
    backup = instance("Flutterwave backup", priority=2, currencies=["NGN"])
    alert = alert_for(primary, [backup], ["NGN"])
    assert alert.severity == "warning"
    assert alert.title == f"Provider unhealthy: {primary.label}"
    assert f"{primary.label} for tenant acme is unhealthy since 2026-01-01 12:00:00 UTC" in (
        alert.text
    )
    assert "connection refused (2 consecutive failures)" in alert.text
    assert f"Routing: payments in NGN now go to {backup.label}." in alert.text
    assert alert.instance_id == primary.id and alert.tenant_id == "acme"


def test_when_the_last_usable_instance_goes_down_the_alert_is_critical() -> None:
    primary = down(instance("Paystack main", currencies=["NGN"]))
    backup_off = instance("Spare", currencies=["NGN"], is_active=False)
    alert = alert_for(primary, [backup_off], ["NGN"])
    assert alert.severity == "critical"
    assert alert.title == (
        f"CRITICAL: payments in NGN for tenant acme will fail ({primary.label} is unhealthy)"
    )
    assert "payments in NGN will FAIL: no usable provider is left" in alert.text


def test_critical_only_for_the_currencies_left_without_a_route() -> None:
    primary = down(instance("Main", priority=1, currencies=["NGN", "GHS", "USD"]))
    naira_backup = instance("Naira backup", plugin_name="naira", priority=2)
    alert = alert_for(primary, [naira_backup], ["NGN", "GHS", "USD"])
    assert alert.severity == "critical"
    assert f"payments in NGN now go to {naira_backup.label}" in alert.text
    assert "payments in GHS, USD will FAIL" in alert.text


def test_another_tenants_or_the_global_instances_do_not_count_as_a_route() -> None:
    primary = down(instance("Acme main", currencies=["NGN"]))
    other_tenant = instance("Beta main", tenant_id="beta", currencies=["NGN"])
    global_one = instance("Platform", tenant_id=None, currencies=["NGN"])
    # a tenant with its own instances is routed only through them (its own keys)
    assert alert_for(primary, [other_tenant, global_one], ["NGN"]).severity == "critical"


def test_an_unhealthy_or_errored_backup_is_no_route_either() -> None:
    primary = down(instance("Main", priority=1, currencies=["NGN"]))
    sick = down(instance("Backup", priority=2, currencies=["NGN"]))
    broken = instance("Broken", priority=3, currencies=["NGN"], status="error")
    assert alert_for(primary, [sick, broken], ["NGN"]).severity == "critical"


def test_equal_priority_backups_are_all_named() -> None:
    primary = down(instance("Main", priority=1, currencies=["NGN"]))
    a = instance("A", priority=5, currencies=["NGN"])
    b = instance("B", priority=5, currencies=["NGN"])
    c = instance("C", priority=9, currencies=["NGN"])
    text = alert_for(primary, [a, b, c], ["NGN"]).text
    assert f"now go to {' or '.join(sorted([a.label, b.label]))}." in text
    assert c.label not in text


def test_a_long_currency_list_is_summarised() -> None:
    codes = [f"C{i:02d}" for i in range(20)]
    primary = down(instance("Main", priority=1))
    backup = instance("Backup", priority=2)
    effect = routing_effect(primary, [primary, backup], codes, lambda _p, _c: True)
    alert = compose_alert(AlertKind.DOWN, primary, Condition.UNHEALTHY, DOWN, effect, at(1))
    assert f"payments in all 20 of its currencies now go to {backup.label}" in alert.text
    primary_only = routing_effect(primary, [primary], codes, lambda _p, _c: True)
    text = compose_alert(AlertKind.DOWN, primary, Condition.UNHEALTHY, DOWN, primary_only, at(1))
    assert "all 20 of its currencies will FAIL" in text.text
    partial_backup = backup.model_copy(update={"currencies": codes[:12]})
    some = routing_effect(primary, [primary, partial_backup], codes, lambda _p, _c: True)
    partial = compose_alert(AlertKind.DOWN, primary, Condition.UNHEALTHY, DOWN, some, at(1))
    assert "C00, C01, C02, C03, C04, C05, C06, C07 (+4 more) now go to" in partial.text


def test_recovery_and_configuration_error_texts() -> None:
    primary = instance("Main", priority=1, currencies=["NGN"], health_message="ok")
    effect = routing_effect(primary, [primary], ["NGN"], supports)
    recovered = compose_alert(AlertKind.RECOVERED, primary, Condition.OK, DOWN, effect, at(600))
    assert recovered.severity == "info"
    assert recovered.title == f"Provider recovered: {primary.label}"
    assert "recovered at 2026-01-01 12:10:00 UTC: health healthy (ok)" in recovered.text
    assert "after being unhealthy since 2026-01-01 12:00:00 UTC" in recovered.text
    assert f"payments in NGN go to {primary.label}" in recovered.text

    broken = primary.model_copy(update={"status": "error", "status_message": "key rejected"})
    backup = instance("Backup", priority=2, currencies=["NGN"])
    effect = routing_effect(broken, [broken, backup], ["NGN"], supports)
    memory = AlertMemory(Condition.ERROR, since=at(5), alerted_at=at(5))
    error = compose_alert(AlertKind.DOWN, broken, Condition.ERROR, memory, effect, at(5))
    assert error.severity == "warning"
    assert error.title == f"Provider configuration rejected: {broken.label}"
    assert "rejected (key rejected)" in error.text and "until an operator fixes" in error.text


def test_a_global_instance_speaks_of_every_tenant_without_its_own() -> None:
    platform = down(instance("Platform", tenant_id=None, currencies=["NGN"]))
    alert = alert_for(platform, [], ["NGN"])
    assert "for every tenant without its own providers" in alert.text


def test_the_alert_becomes_an_alert_raised_event() -> None:
    alert = Alert("critical", "t", "x", uuid.uuid4(), "acme")
    event = alert.event()
    assert event.type == "alert.raised" and event.severity == "critical"
    assert (event.instance_id, event.tenant_id, event.title, event.text) == (
        alert.instance_id,
        "acme",
        "t",
        "x",
    )


# -- where: sinks and delivery -------------------------------------------------------

ALERT = Alert("warning", "Provider unhealthy: Main", "Main is down.", uuid.uuid4(), "acme")


class FlakySink:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def send(self, alert: Alert) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("down")


def test_a_failing_sink_is_retried_with_backoff_and_then_succeeds() -> None:
    sink = FlakySink(failures=2)
    pauses: list[float] = []
    assert deliver(ALERT, [sink], attempts=3, backoff_s=0.5, sleep=pauses.append) == {"flaky": True}
    assert sink.calls == 3 and pauses == [0.5, 1.0]


def test_a_sink_that_keeps_failing_is_logged_never_raised_and_others_still_deliver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead, fine = FlakySink(failures=99), FlakySink(failures=0)
    dead.name = "dead"
    with caplog.at_level(logging.WARNING, logger="workers.monitoring.alerts"):
        result = deliver(ALERT, [dead, fine], attempts=3, sleep=lambda _s: None)
    assert result == {"dead": False, "flaky": True}
    assert dead.calls == 3
    assert "alert 'Provider unhealthy: Main' not delivered to dead after 3 attempts" in caplog.text


def test_the_log_sink_logs_at_the_alerts_severity(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="workers.monitoring.alerts"):
        LogSink().send(Alert("critical", "T", "body"))
    assert caplog.records[-1].levelno == logging.CRITICAL
    assert caplog.records[-1].getMessage() == "ALERT T: body"


class Receiver:
    """A tiny local webhook receiver; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/SECRET-TOKEN"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(statuses=[500])
    yield server
    server.close()


def test_webhook_posts_slack_json_and_is_retried_after_a_5xx(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.monitoring.alerts"):
        result = deliver(ALERT, [WebhookSink(receiver.url, 2.0)], sleep=lambda _s: None)
    assert result == {"webhook": True}
    assert len(receiver.bodies) == 2  # the 500, then the retry
    assert receiver.bodies[-1] == {"text": "⚠️ *Provider unhealthy: Main*\nMain is down."}
    assert "answered HTTP 500" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text  # a Slack webhook URL is itself a credential


def test_an_unreachable_webhook_is_logged_without_its_url(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = WebhookSink(f"http://127.0.0.1:{port}/services/SECRET-TOKEN", 1.0)
    with caplog.at_level(logging.WARNING, logger="workers.monitoring.alerts"):
        assert deliver(ALERT, [sink], attempts=2, sleep=lambda _s: None) == {"webhook": False}
    assert "ConnectError" in caplog.text and "SECRET-TOKEN" not in caplog.text


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode())
        )
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_email_goes_to_every_recipient_over_smtp() -> None:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        sink = EmailSink(
            "127.0.0.1", controller.port, "tender@ops.test", ["a@ops.test", "b@ops.test"], 5.0
        )
        assert deliver(Alert("critical", "Payments failing", "NGN has no route."), [sink]) == {
            "email": True
        }
    finally:
        controller.stop()
    [(sender, recipients, content)] = mailbox.messages
    assert sender == "tender@ops.test" and recipients == ["a@ops.test", "b@ops.test"]
    assert "Subject: [tender critical] Payments failing" in content
    assert "NGN has no route." in content


def test_sinks_are_chosen_in_settings() -> None:
    assert [s.name for s in sinks_from_settings(Settings())] == ["log"]
    configured = Settings(
        alert_webhook_url="https://hooks.example/x",
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=2525,
        alert_email_to=["ops@example.com"],
    )
    assert [s.name for s in sinks_from_settings(configured)] == ["log", "webhook", "email"]
    # an SMTP host but nobody to write to is no email sink
    assert [s.name for s in sinks_from_settings(Settings(alert_smtp_host="x"))] == ["log"]


def test_several_alerts_are_delivered_side_by_side() -> None:
    class MeetingSink:
        """Each delivery waits until all four are under way: in turn, none would ever
        get past the barrier (it breaks after its timeout, and the delivery fails)."""

        name = "meeting"

        def __init__(self) -> None:
            self.sent: list[str] = []
            self.together = threading.Barrier(4, timeout=20)

        def send(self, alert: Alert) -> None:
            self.together.wait()
            self.sent.append(alert.title)

    sink = MeetingSink()
    batch = [Alert("warning", f"a{i}", "x") for i in range(4)]
    deliver_all(batch, [sink], Settings(alert_delivery_attempts=1))
    assert sorted(sink.sent) == ["a0", "a1", "a2", "a3"]
