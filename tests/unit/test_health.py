"""Provider health: the circuit rules (pure), the checks, and the monitor on SQLite and
PostgreSQL (history, current health, routing, events, alerts, the run guards).

Monitor tests take ``registry`` through ``database_url``, so each runs twice: on a
migrated SQLite file and on a fresh schema of the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from config.settings import Settings
from providers.base import (
    HealthCheck,
    HealthStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
    WebhookEvent,
    utcnow,
)
from providers.errors import ConfigurationError, ProviderUnavailable
from providers.redaction import redact
from providers.sandbox import SandboxProvider
from registry.catalogue import Catalogue
from registry.db import get_database
from registry.models import PluginHealth, RegistryState
from registry.service import PluginRegistry
from workers.core.locks import hold
from workers.core.threads import ProviderLoop
from workers.ledger.outbox import OutboxEvent
from workers.monitoring.alerts import Alert, AlertState
from workers.monitoring.health import (
    LOCK_NAME,
    Circuit,
    HealthMonitor,
    HealthRun,
    Observation,
    next_circuit,
    observe,
    observe_all,
    routability_changed,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=utcnow().tzinfo)
HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
SECRET = "sk_live_SCR1PT_SECRET_41f9"  # no 8-character run shared with a name


# -- the circuit: pure rules ---------------------------------------------------------


def test_one_failure_below_the_threshold_keeps_the_instance_routable() -> None:
    after = next_circuit(Circuit("healthy", T0, 0), UNHEALTHY, T0 + timedelta(seconds=30), 2)
    assert after == Circuit("healthy", T0, 1)
    assert after.routable


def test_threshold_failures_in_a_row_open_the_circuit() -> None:
    first = next_circuit(Circuit("healthy", T0, 0), UNHEALTHY, T0 + timedelta(seconds=30), 2)
    opened_at = T0 + timedelta(seconds=60)
    second = next_circuit(first, UNHEALTHY, opened_at, 2)
    assert second == Circuit("unhealthy", opened_at, 2)
    assert not second.routable and routability_changed(first, second)


def test_an_open_circuit_stays_open_and_keeps_its_since_while_checks_fail() -> None:
    opened = Circuit("unhealthy", T0, 2)
    later = next_circuit(opened, UNHEALTHY, T0 + timedelta(minutes=5), 2)
    assert later == Circuit("unhealthy", T0, 3)
    assert not routability_changed(opened, later)


@pytest.mark.parametrize("passing", [HEALTHY, DEGRADED])
def test_a_passing_check_closes_an_open_circuit(passing: HealthStatus) -> None:
    closed_at = T0 + timedelta(minutes=1)
    after = next_circuit(Circuit("unhealthy", T0, 4), passing, closed_at, 2)
    assert after == Circuit(passing.value, closed_at, 0)
    assert after.routable and routability_changed(Circuit("unhealthy", T0, 4), after)


def test_a_pass_resets_the_failure_count_so_failures_must_be_consecutive() -> None:
    circuit = Circuit("healthy", T0, 0)
    for status in (UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY, UNHEALTHY):
        circuit = next_circuit(circuit, status, T0, 2)
    assert circuit.health == "healthy" and circuit.consecutive_failures == 1


def test_a_first_failure_from_unknown_stays_unknown_without_a_since() -> None:
    assert next_circuit(Circuit("unknown", None, 0), UNHEALTHY, T0, 2) == Circuit(
        "unknown", None, 1
    )


def test_threshold_one_opens_on_the_first_failure() -> None:
    assert next_circuit(Circuit("unknown", None, 0), UNHEALTHY, T0, 1).health == "unhealthy"


def test_first_check_moves_unknown_to_healthy_with_since() -> None:
    assert next_circuit(Circuit("unknown", None, 0), HEALTHY, T0, 2) == Circuit("healthy", T0, 0)


def test_degraded_is_a_change_of_health_but_not_of_routability() -> None:
    before = Circuit("healthy", T0, 0)
    after = next_circuit(before, DEGRADED, T0 + timedelta(seconds=30), 2)
    assert after.health == "degraded" and not routability_changed(before, after)


# -- one check -------------------------------------------------------------------------


class ScriptedConfig(ProviderConfig):
    api_key: SecretStr = SecretStr(SECRET)
    behaviour: str = "healthy"  # healthy | degraded | down | hang | raise | garbage | reject


HANGING: list[int] = []  # "hang" checks in flight now
HANGING_PEAK = [0]  # the most in flight at once


class ScriptedProvider(PaymentProvider):
    """A provider whose health check does what its config says."""

    name: ClassVar[str] = "scripted"
    display_name: ClassVar[str] = "Scripted"
    supported_currencies: ClassVar[frozenset[str]] = frozenset({"NGN", "USD"})
    config_model: ClassVar[type[ProviderConfig]] = ScriptedConfig

    @property
    def behaviour(self) -> str:
        config = self.config
        assert isinstance(config, ScriptedConfig)
        return config.behaviour

    async def health_check(self) -> HealthCheck:
        behaviour = self.behaviour
        if behaviour == "hang":
            HANGING.append(1)
            HANGING_PEAK[0] = max(HANGING_PEAK[0], len(HANGING))
            try:
                await asyncio.sleep(3600)
            finally:
                HANGING.pop()
        if behaviour == "raise":
            raise RuntimeError("socket exploded")
        if behaviour == "garbage":
            return {"status": "healthy"}  # type: ignore[return-value]
        if behaviour == "reject":
            raise ConfigurationError(f"Invalid key {SECRET}", provider=self.name, code="401")
        if behaviour == "down":
            raise ProviderUnavailable("connection refused", provider=self.name)
        status = DEGRADED if behaviour == "degraded" else HEALTHY
        return HealthCheck(status=status, message=behaviour, latency_ms=1.5)

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        raise ProviderUnavailable("not for payments", provider=self.name)

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        raise NotImplementedError

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        raise NotImplementedError

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        raise NotImplementedError


def scripted(behaviour: str) -> ScriptedProvider:
    plugin = ScriptedProvider()
    plugin.configure({"behaviour": behaviour})
    return plugin


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("raise", "health check raised RuntimeError: socket exploded"),
        ("garbage", "health check returned dict, not a HealthCheck"),
        ("down", "health check raised ProviderUnavailable: [scripted] connection refused"),
    ],
)
def test_a_check_that_raises_or_returns_garbage_is_unhealthy_with_the_reason(
    behaviour: str, reason: str
) -> None:
    observation = asyncio.run(observe(scripted(behaviour)))
    assert observation.status is UNHEALTHY
    assert observation.message == reason
    assert not observation.configuration_error


def test_a_rejected_key_is_a_configuration_error_and_the_key_never_shows() -> None:
    observation = asyncio.run(observe(scripted("reject")))
    assert observation.status is UNHEALTHY and observation.configuration_error
    assert "Invalid key ***" in observation.message
    assert SECRET not in observation.message


def test_checks_run_at_once_and_a_hanging_one_times_out() -> None:
    plugins = {uuid.uuid4(): scripted(b) for b in ("hang", "healthy", "hang", "degraded")}
    HANGING_PEAK[0] = 0
    observations = asyncio.run(observe_all(plugins, timeout_s=0.3))
    assert HANGING_PEAK[0] == 2  # both hanging checks were in flight at once, not in turn
    statuses = [observations[i].status for i in plugins]
    assert statuses == [UNHEALTHY, HEALTHY, UNHEALTHY, DEGRADED]
    hung = observations[next(iter(plugins))]
    assert hung.message == "health check timed out after 0.3 s"


def test_a_check_that_ignores_cancellation_cannot_hold_up_the_run() -> None:
    released = threading.Event()  # the stubborn check runs until the test lets it go

    class Stubborn(ScriptedProvider):
        async def health_check(self) -> HealthCheck:
            while not released.is_set():
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue
            return HealthCheck(status=HEALTHY, latency_ms=0)

    stubborn = Stubborn()
    stubborn.configure({})
    loop = ProviderLoop()
    try:
        result = loop.run(observe_all({uuid.uuid4(): stubborn}, timeout_s=0.2), timeout_s=30)
        assert not released.is_set()  # the run answered while the check still ran
        assert next(iter(result.values())).message.startswith("health check timed out")
    finally:
        released.set()
        loop.close()


def test_redact_removes_known_secrets_and_key_shaped_tokens() -> None:
    message = "rejected sk_test_4eC39HqLyjWDarjtT1zdp7dc and my-own-secret-value"
    assert redact(message, ["my-own-secret-value"]) == "rejected *** and ***"


# -- the monitor, on SQLite and PostgreSQL -------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.published.extend(rows)

    def types(self) -> list[str]:
        return [event_type for event_type, _ in self.published]


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


class BrokenSink:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def send(self, alert: Alert) -> None:
        self.calls += 1
        raise ConnectionRefusedError("smtp is down")


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def loop() -> Iterator[ProviderLoop]:
    provider_loop = ProviderLoop()
    yield provider_loop
    provider_loop.close()


@pytest.fixture
def reg(database_url: str) -> PluginRegistry:
    plugins = Catalogue()
    plugins.register("sandbox", SandboxProvider)
    plugins.register("scripted", ScriptedProvider)
    return PluginRegistry(get_database(database_url), plugins=plugins, poll_s=0)


class Harness:
    def __init__(self, reg: PluginRegistry, loop: ProviderLoop, **settings: Any) -> None:
        self.reg = reg
        self.publisher = FakePublisher()
        self.sink = RecordingSink()
        self.clock = Clock()
        self.settings = Settings(
            **{"health_check_timeout_s": 0.5, "alert_delivery_attempts": 1, **settings}
        )
        self.monitor = HealthMonitor(
            reg.database,
            reg,
            loop,
            self.publisher,  # type: ignore[arg-type]
            self.settings,
            sinks=[self.sink],
            clock=self.clock,
        )

    def run(self, *, advance_s: float = 30.0) -> dict[str, Any]:
        self.clock.advance(advance_s)
        return self.monitor.run()

    def add(self, name: str, plugin: str = "sandbox", **kwargs: Any) -> uuid.UUID:
        config = kwargs.pop("config", {})
        kwargs.setdefault("tenant_id", "acme")
        kwargs.setdefault("currencies", ["NGN"])
        view = self.reg.create_instance(
            plugin, config, display_name=name, is_active=kwargs.pop("active", True), **kwargs
        )
        return view.id

    def generation(self) -> int:
        with self.reg.database.sessions() as session:
            return session.execute(select(RegistryState.generation)).scalar_one()

    def history(self, instance_id: uuid.UUID) -> list[PluginHealth]:
        with self.reg.database.sessions() as session:
            return list(
                session.scalars(
                    select(PluginHealth)
                    .where(PluginHealth.instance_id == instance_id)
                    .order_by(PluginHealth.id)
                )
            )

    def route(self) -> list[str]:
        self.reg.refresh(force=True)
        return [
            v.display_name
            for v in self.reg.resolve(tenant_id="acme", currency="NGN", idempotency_key="k")
        ]


@pytest.fixture
def harness(reg: PluginRegistry, loop: ProviderLoop) -> Harness:
    return Harness(reg, loop)


def test_each_result_is_stored_as_history_and_as_the_current_health(harness: Harness) -> None:
    primary = harness.add("primary")
    report = harness.run()
    assert report["checked"] == 1 and report["healthy"] == 1
    [row] = harness.history(primary)
    assert (row.status, row.message) == ("healthy", "ok") and row.latency_ms >= 0
    view = harness.reg.get_instance(primary)
    assert view.health == "healthy" and view.health_since == harness.clock.now
    assert view.last_checked_at == harness.clock.now and view.health_latency_ms is not None
    harness.run()
    assert len(harness.history(primary)) == 2
    assert harness.reg.get_instance(primary).health_since == view.health_since


def test_an_instance_down_twice_is_unhealthy_and_routing_skips_it(harness: Harness) -> None:
    primary = harness.add("primary", priority=1)
    harness.add("backup", priority=2)
    harness.run()
    assert harness.route() == ["primary", "backup"]

    harness.reg.update_config(primary, {"outage": True})
    harness.run()
    assert harness.reg.get_instance(primary).health == "healthy"  # one failure: still routed
    assert harness.route() == ["primary", "backup"]
    harness.run()
    view = harness.reg.get_instance(primary)
    assert view.health == "unhealthy" and view.consecutive_failures == 2
    assert view.health_message == "sandbox outage switch is on"
    assert harness.route() == ["backup"]

    harness.reg.update_config(primary, {"outage": False})
    harness.run()  # the half-open probe passes: back in the route
    assert harness.reg.get_instance(primary).health == "healthy"
    assert harness.route() == ["primary", "backup"]


def test_the_generation_moves_only_when_routability_changes(harness: Harness) -> None:
    primary = harness.add("primary")
    harness.run()
    steady = harness.generation()
    for _ in range(3):
        harness.run()
    assert harness.generation() == steady  # healthy -> healthy: caches stay warm

    harness.reg.update_config(primary, {"outage": True})
    configured = harness.generation()
    harness.run()
    assert harness.generation() == configured  # one failure: routing unchanged
    harness.run()
    assert harness.generation() == configured + 1  # circuit opened
    harness.run()
    assert harness.generation() == configured + 1


def test_every_change_of_health_is_an_event_in_the_outbox_and_published(
    harness: Harness,
) -> None:
    primary = harness.add("primary", config={"outage": True})
    for _ in range(3):
        harness.run()
    with harness.reg.database.sessions() as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.event_type == "provider.health_changed")
            .order_by(OutboxEvent.id)
        ).all()
    assert [(r.payload["previous"], r.payload["current"]) for r in rows] == [
        ("unknown", "unhealthy")
    ]
    assert rows[0].payload["instance_id"] == str(primary) and rows[0].published_at is not None
    assert harness.publisher.types().count("provider.health_changed") == 1


def test_hanging_raising_and_garbage_checks_count_as_failures(harness: Harness) -> None:
    behaviours = ("hang", "raise", "garbage", "healthy")
    ids = {b: harness.add(b, plugin="scripted", config={"behaviour": b}) for b in behaviours}
    report = harness.run()  # returns: the hanging check's timeout ended it (message below)
    assert report["unhealthy"] == 3 and report["healthy"] == 1
    messages = {b: harness.history(i)[0].message for b, i in ids.items()}
    assert messages["hang"] == "health check timed out after 0.5 s"
    assert messages["raise"] == "health check raised RuntimeError: socket exploded"
    assert messages["garbage"] == "health check returned dict, not a HealthCheck"


def test_a_rejected_key_marks_the_instance_error_and_alerts_without_the_key(
    harness: Harness,
) -> None:
    broken = harness.add("keys", plugin="scripted", config={"behaviour": "reject"})
    harness.add("backup", priority=200)
    report = harness.run()
    view = harness.reg.get_instance(broken)
    assert view.status == "error" and not view.routable
    assert view.status_message and "Invalid key ***" in view.status_message
    assert report["errors"] == [view.label]
    [alert] = harness.sink.alerts
    assert alert.title == f"Provider configuration rejected: {view.label}"
    assert "payments in NGN now go to backup" in alert.text
    everything = [alert.text, alert.title, view.status_message] + [
        h.message for h in harness.history(broken)
    ]
    assert not any(SECRET in text for text in everything)
    with harness.reg.database.sessions() as session:
        payloads = [str(r.payload) for r in session.scalars(select(OutboxEvent))]
    assert not any(SECRET in p for p in payloads)

    harness.run()  # an instance in error is not checked again, nor re-alerted
    assert len(harness.history(broken)) == 1 and len(harness.sink.alerts) == 1


def test_live_payment_failures_count_toward_the_same_circuit(harness: Harness) -> None:
    primary = harness.add("primary", priority=1)
    harness.add("backup", priority=2)
    harness.run()
    harness.monitor.record_live_failure(primary, "[sandbox] connection refused")
    assert harness.reg.get_instance(primary).health == "healthy"
    transition = harness.monitor.record_live_failure(primary, "[sandbox] connection refused")
    assert transition is not None and transition.after.health == "unhealthy"
    assert harness.route() == ["backup"]
    assert harness.history(primary)[-1].message == "live payment: [sandbox] connection refused"
    assert "provider.health_changed" in harness.publisher.types()
    wait_until(lambda: len(harness.sink.alerts) == 1)  # delivered off the payment's thread
    assert harness.sink.alerts[0].title.startswith("Provider unhealthy: primary")

    harness.run()  # the next scheduled check passes: half-open -> closed
    assert harness.reg.get_instance(primary).health == "healthy"
    assert [a.title.split(":")[0] for a in harness.sink.alerts] == [
        "Provider unhealthy",
        "Provider recovered",
    ]


def test_a_live_failure_while_a_check_passes_is_one_failure_not_an_alert(
    harness: Harness,
) -> None:
    primary = harness.add("primary")
    harness.run()
    harness.monitor.record_live_failure(primary, "blip")
    harness.run()
    assert harness.reg.get_instance(primary).consecutive_failures == 0
    assert harness.sink.alerts == []


def test_one_alert_down_none_while_it_holds_a_reminder_after_cooldown_one_on_recovery(
    reg: PluginRegistry, loop: ProviderLoop
) -> None:
    harness = Harness(reg, loop, alert_cooldown_s=300)
    primary = harness.add("primary", config={"outage": True})
    for _ in range(5):  # 30 s apart: 2 to open, then 3 while it holds
        harness.run()
    assert [a.severity for a in harness.sink.alerts] == ["critical"]
    harness.run(advance_s=300)
    assert len(harness.sink.alerts) == 2
    reminder = harness.sink.alerts[1]
    assert reminder.title.startswith("Reminder: CRITICAL: payments in NGN for tenant acme")
    assert reminder.text.startswith("Still unhealthy. primary (sandbox,")
    harness.run()
    assert len(harness.sink.alerts) == 2
    harness.reg.update_config(primary, {"outage": False})
    harness.run()
    harness.run()
    titles = [a.title for a in harness.sink.alerts]
    assert len(titles) == 3 and titles[2].startswith("Provider recovered: primary")
    with reg.database.sessions() as session:
        assert session.scalars(select(AlertState)).all() == []
        raised = session.scalars(
            select(OutboxEvent).where(OutboxEvent.event_type == "alert.raised")
        ).all()
    assert [r.payload["severity"] for r in raised] == ["critical", "critical", "info"]


def test_a_switched_off_instance_is_checked_but_never_alerted(harness: Harness) -> None:
    spare = harness.add("spare", config={"outage": True}, active=False)
    for _ in range(3):
        harness.run()
    assert harness.reg.get_instance(spare).health == "unhealthy"
    assert harness.sink.alerts == []


def test_a_failing_sink_is_retried_and_never_breaks_the_run(
    reg: PluginRegistry, loop: ProviderLoop
) -> None:
    harness = Harness(reg, loop, alert_delivery_attempts=2)
    broken = BrokenSink()
    harness.monitor.sinks = [broken, harness.sink]
    primary = harness.add("primary", config={"outage": True})
    harness.run()
    report = harness.run()
    assert broken.calls == 2  # retried
    assert len(harness.sink.alerts) == 1  # the other sink still got it
    assert report["alerts"] and harness.reg.get_instance(primary).health == "unhealthy"


def test_a_second_run_soon_after_the_last_one_began_does_nothing(harness: Harness) -> None:
    primary = harness.add("primary")
    harness.run()
    assert harness.run(advance_s=10)["skipped"].startswith("the last health run started")
    assert len(harness.history(primary)) == 1
    assert harness.run(advance_s=10)["checked"] == 1  # 20 s >= half of 30 s
    assert harness.monitor.run(force=True)["checked"] == 1  # the CLI's --check


def test_a_slow_run_does_not_make_the_next_tick_skip(harness: Harness) -> None:
    primary = harness.add("primary")
    harness.run()
    with harness.reg.database.transaction() as session:  # that run took 20 s of a 30 s interval
        session.get_one(HealthRun, LOCK_NAME).finished_at = harness.clock.now + timedelta(
            seconds=20
        )
    assert harness.run(advance_s=30)["checked"] == 1  # 30 s after it began: due
    assert len(harness.history(primary)) == 2


def test_runs_never_overlap(harness: Harness) -> None:
    harness.add("primary")
    with hold(harness.reg.database, LOCK_NAME) as held:
        assert held
        assert harness.run()["skipped"] == "another health run is in progress"


def test_two_beats_at_once_make_one_run(reg: PluginRegistry, loop: ProviderLoop) -> None:
    harness = Harness(reg, loop)
    primary = harness.add("slow", config={"latency_ms": 300})
    harness.clock.advance(30)
    reports: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: reports.append(harness.monitor.run())) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted("skipped" in r for r in reports) == [False, True]
    assert len(harness.history(primary)) == 1


def test_a_retired_instance_is_skipped_quietly(harness: Harness) -> None:
    primary = harness.add("primary")
    harness.run()
    harness.reg.retire(primary)
    assert harness.monitor.record_live_failure(primary, "gone") is None
    assert harness.run()["checked"] == 0


def test_observation_without_latency_keeps_the_last_measured_one(harness: Harness) -> None:
    primary = harness.add("primary")
    harness.run()
    measured = harness.reg.get_instance(primary).health_latency_ms
    harness.monitor._record(primary, Observation(UNHEALTHY, "live", None), harness.clock.now)
    assert harness.reg.get_instance(primary).health_latency_ms == measured


def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.02)


def test_an_instance_retired_while_its_key_is_rejected_does_not_break_the_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = harness.add("keys", plugin="scripted", config={"behaviour": "reject"})
    fine = harness.add("fine")
    mark_error = harness.reg.mark_error

    def retired_first(instance_id: uuid.UUID, message: str) -> Any:
        harness.reg.retire(instance_id)  # an operator retires it mid-run
        return mark_error(instance_id, message)

    monkeypatch.setattr(harness.reg, "mark_error", retired_first)
    report = harness.run()
    assert report["checked"] == 2
    assert harness.reg.get_instance(fine).health == "healthy"
    assert harness.history(broken) == []
