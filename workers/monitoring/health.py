"""Provider health: the scheduled checks, the circuit, and live-failure accounting.

``health_check_all`` (beat, every ``health_interval_s``) runs every instance's
``health_check()`` at once on the process's provider loop, each bounded by
``health_check_timeout_s``. A check that hangs, raises or answers something other
than a :class:`~providers.base.HealthCheck` counts as unhealthy, with the reason.
Runs never overlap (a lease lock), and a run that finds the last completed run
started less than half an interval ago does nothing, so a second beat cannot double
the schedule. (Measured from the start, not the end: from the end, a run slower than
half an interval, e.g. one provider hanging until the timeout, would make every other
tick skip, halving the check rate exactly when a provider is in trouble.)

The circuit (:func:`next_circuit`, pure): ``circuit_failure_threshold`` failures in a
row (checks, or live payments that found the provider unavailable) open it: the
instance is ``unhealthy`` and routing skips it. The scheduled check keeps probing an
open circuit (half-open); the first passing check closes it. Each change of health
writes a ``provider.health_changed`` event in the same transaction; the registry
generation is bumped only when routability changes (to or from ``unhealthy``), so
workers' caches do not reload on every run.

A check that raises :class:`~providers.errors.ConfigurationError` (keys rejected)
marks the instance ``error``. Alerts follow each run (:mod:`workers.monitoring.alerts`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from config.settings import Settings, get_settings
from providers.base import HealthCheck, HealthStatus, PaymentProvider, utcnow
from providers.errors import ConfigurationError
from registry.db import Base, Database, UTCDateTime, get_database
from registry.errors import InstanceNotFound
from registry.instances import InstanceStatus, InstanceView
from registry.models import PluginHealth, PluginInstance
from registry.secrets import sanitize, secret_values
from registry.service import PluginRegistry
from workers.core import metrics
from workers.core.locks import hold
from workers.core.threads import CallTimeout, ProviderLoop
from workers.events.relay import EventPublisher, publish_now
from workers.ledger.outbox import HealthChangedEvent, add_event
from workers.monitoring import alerts
from workers.monitoring.alerts import Alert, AlertMemory, AlertSink, AlertState

log = logging.getLogger(__name__)

LOCK_NAME = "health_check_all"
UNHEALTHY = HealthStatus.UNHEALTHY.value
PASSING = frozenset({HealthStatus.HEALTHY, HealthStatus.DEGRADED})


class HealthRun(Base):
    """The last completed health run (the guard against a doubled schedule)."""

    __tablename__ = "health_runs"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    checked: Mapped[int] = mapped_column(Integer, default=0)


# -- the circuit: pure rules -------------------------------------------------------


@dataclass(frozen=True)
class Circuit:
    """An instance's health as the router sees it."""

    health: str  # unknown | healthy | degraded | unhealthy
    since: datetime | None
    consecutive_failures: int

    @property
    def routable(self) -> bool:
        return self.health != UNHEALTHY


def next_circuit(
    circuit: Circuit, observed: HealthStatus, now: datetime, threshold: int
) -> Circuit:
    """Apply one observation (a check result, or a live failure as ``unhealthy``).

    A pass (healthy or degraded) resets the failure count and closes an open circuit.
    A failure counts; the circuit opens when the count reaches ``threshold``. Below
    it, the health shown stays what it was (one blip does not reroute payments).
    """
    if observed in PASSING:
        health, failures = observed.value, 0
    else:
        failures = circuit.consecutive_failures + 1
        health = UNHEALTHY if failures >= threshold else circuit.health
    since = circuit.since if health == circuit.health else now
    return Circuit(health, since, failures)


def routability_changed(before: Circuit, after: Circuit) -> bool:
    return before.routable != after.routable


# -- one check ----------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    status: HealthStatus
    message: str
    latency_ms: float | None  # None: not measured (a live failure)
    configuration_error: bool = False


async def observe(plugin: PaymentProvider) -> Observation:
    """Run ``plugin.health_check()`` once; any failure becomes an unhealthy observation."""
    started = time.perf_counter()

    def failed(message: str, *, configuration_error: bool = False) -> Observation:
        latency_ms = (time.perf_counter() - started) * 1000
        message = sanitize(message, secret_values(plugin))
        return Observation(HealthStatus.UNHEALTHY, message, latency_ms, configuration_error)

    try:
        result = await plugin.health_check()
    except ConfigurationError as exc:
        return failed(f"configuration rejected: {exc}", configuration_error=True)
    except Exception as exc:
        return failed(f"health check raised {type(exc).__name__}: {exc}")
    if not isinstance(result, HealthCheck):
        return failed(f"health check returned {type(result).__name__}, not a HealthCheck")
    return Observation(
        result.status, sanitize(result.message, secret_values(plugin)), result.latency_ms
    )


async def observe_all(
    plugins: Mapping[uuid.UUID, PaymentProvider], timeout_s: float
) -> dict[uuid.UUID, Observation]:
    """Check every plugin at once; a check still running after ``timeout_s`` is
    abandoned (cancelled, not awaited: a plugin that ignores cancellation cannot
    hold up the run) and counted unhealthy."""
    tasks = {instance_id: asyncio.ensure_future(observe(p)) for instance_id, p in plugins.items()}
    if not tasks:
        return {}
    _done, pending = await asyncio.wait(tasks.values(), timeout=timeout_s)
    for task in pending:
        task.cancel()
    timed_out = Observation(
        HealthStatus.UNHEALTHY, f"health check timed out after {timeout_s:g} s", timeout_s * 1000
    )
    return {
        instance_id: timed_out if task in pending else task.result()
        for instance_id, task in tasks.items()
    }


# -- the monitor -------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    instance_id: uuid.UUID
    before: Circuit
    after: Circuit

    @property
    def health_changed(self) -> bool:
        return self.before.health != self.after.health


class HealthMonitor:
    """Checks, circuit bookkeeping and alerts for one process.

    Parameters: ``database`` and ``registry`` (the process's), ``loop`` (the provider
    loop the checks run on), ``publisher`` (events), ``sinks`` (alerts; default from
    settings), ``clock`` (UTC now).
    """

    def __init__(
        self,
        database: Database,
        registry: PluginRegistry,
        loop: ProviderLoop,
        publisher: EventPublisher,
        settings: Settings,
        *,
        sinks: list[AlertSink] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.loop = loop
        self.publisher = publisher
        self.settings = settings
        self.sinks = alerts.sinks_from_settings(settings) if sinks is None else sinks
        self.clock = clock

    # -- the scheduled run -------------------------------------------------------

    def run(self, *, force: bool = False) -> dict[str, Any]:
        """One health run, unless another is running or the last began < interval/2 ago."""
        settings = self.settings
        with hold(self.database, LOCK_NAME) as held:
            if not held:
                return {"skipped": "another health run is in progress"}
            started = self.clock()
            last = self._last_started()
            if not force and last is not None:
                age_s = (started - last).total_seconds()
                if age_s < settings.health_interval_s / 2:
                    return {"skipped": f"the last health run started {age_s:.2f} s ago"}
            report, raised = self._run_once()
            self._finished(started, report["checked"])
        # Outside the lock: a slow or dead sink must not hold up the next run.
        alerts.deliver_all(raised, self.sinks, self.settings)
        log.info(
            "health run: %d checked in %.0f ms, %d unhealthy, %d transitions, %d alerts",
            report["checked"],
            report["duration_ms"],
            report["unhealthy"],
            len(report["transitions"]),
            len(raised),
        )
        return report

    def _run_once(self) -> tuple[dict[str, Any], list[Alert]]:
        began = time.perf_counter()
        self.registry.refresh(force=True)
        views = [v for v in self.registry.snapshot() if v.status != InstanceStatus.ERROR]
        observations: dict[uuid.UUID, Observation] = {}
        plugins: dict[uuid.UUID, PaymentProvider] = {}
        for view in views:
            try:
                plugins[view.id] = self.registry.plugin_for(view)
            except ConfigurationError as exc:
                observations[view.id] = Observation(
                    HealthStatus.UNHEALTHY,
                    sanitize(f"configuration rejected: {exc}"),
                    None,
                    configuration_error=True,
                )
            except Exception as exc:
                observations[view.id] = Observation(
                    HealthStatus.UNHEALTHY, f"cannot load plugin: {type(exc).__name__}: {exc}", None
                )
        timeout_s = self.settings.health_check_timeout_s
        try:
            observations |= self.loop.run(observe_all(plugins, timeout_s), timeout_s + 5)
        except CallTimeout:  # the loop itself is stuck: every check failed
            stuck = Observation(HealthStatus.UNHEALTHY, "the provider loop did not answer", None)
            observations |= dict.fromkeys(plugins, stuck)

        now = self.clock()
        by_id = {v.id: v for v in views}
        transitions: list[Transition] = []
        outbox: list[int] = []
        for instance_id, observation in observations.items():
            _count_check(by_id[instance_id], observation)
            if observation.configuration_error:
                try:
                    self.registry.mark_error(instance_id, observation.message)
                except InstanceNotFound:  # retired while it was being checked
                    continue
            recorded = self._record(instance_id, observation, now)
            if recorded is not None:
                transition, outbox_id = recorded
                if transition.health_changed:
                    transitions.append(transition)
                if outbox_id is not None:
                    outbox.append(outbox_id)
        publish_now(self.database, self.publisher, outbox)
        raised = self.raise_alerts(now)

        counts = {status.value: 0 for status in HealthStatus}
        for observation in observations.values():
            counts[observation.status.value] += 1
        report = {
            "checked": len(observations),
            **counts,
            "errors": sorted(
                by_id[i].label for i, o in observations.items() if o.configuration_error
            ),
            "transitions": [
                {
                    "instance": by_id[t.instance_id].label,
                    "from": t.before.health,
                    "to": t.after.health,
                }
                for t in transitions
            ],
            "alerts": [a.title for a in raised],
            "duration_ms": round((time.perf_counter() - began) * 1000, 1),
        }
        return report, raised

    def check_one(self, instance_id: uuid.UUID) -> Observation:
        """Check one instance now ("Test connection"), record the result like a scheduled
        check (history, circuit, alerts for that instance) and return it."""
        self.registry.refresh(force=True)
        view = next((v for v in self.registry.snapshot() if v.id == instance_id), None)
        if view is None:
            raise InstanceNotFound(f"no provider instance {instance_id}")
        timeout_s = self.settings.health_check_timeout_s
        try:
            plugin = self.registry.plugin_for(view)
            observation = self.loop.run(observe_all({view.id: plugin}, timeout_s), timeout_s + 5)[
                view.id
            ]
        except ConfigurationError as exc:
            observation = Observation(
                HealthStatus.UNHEALTHY,
                sanitize(f"configuration rejected: {exc}"),
                None,
                configuration_error=True,
            )
        except CallTimeout:
            observation = Observation(
                HealthStatus.UNHEALTHY, "the provider loop did not answer", None
            )
        _count_check(view, observation)
        if observation.configuration_error:
            self.registry.mark_error(instance_id, observation.message)
        now = self.clock()
        recorded = self._record(instance_id, observation, now)
        if recorded is not None and recorded[1] is not None:
            publish_now(self.database, self.publisher, [recorded[1]])
        raised = self.raise_alerts(now, only={instance_id})
        alerts.deliver_in_background(raised, self.sinks, self.settings)
        return observation

    # -- live failures ---------------------------------------------------------------

    def record_live_failure(self, instance_id: uuid.UUID, message: str) -> Transition | None:
        """A live payment found the instance unavailable: one failure for its circuit.

        Alerts that follow are delivered on a background thread: the payment that
        noticed must not wait on a slow webhook.
        """
        now = self.clock()
        observation = Observation(
            HealthStatus.UNHEALTHY, f"live payment: {sanitize(message)}", None
        )
        recorded = self._record(instance_id, observation, now)
        if recorded is None:
            return None
        transition, outbox_id = recorded
        publish_now(self.database, self.publisher, [outbox_id] if outbox_id is not None else [])
        if transition.health_changed:
            raised = self.raise_alerts(now, only={instance_id})
            alerts.deliver_in_background(raised, self.sinks, self.settings)
        return transition

    # -- writing -----------------------------------------------------------------

    def _record(
        self, instance_id: uuid.UUID, observation: Observation, now: datetime
    ) -> tuple[Transition, int | None] | None:
        """Store one observation and move the circuit, in one transaction. Returns the
        transition and the outbox id of its event (None if health did not change)."""
        threshold = self.settings.circuit_failure_threshold
        with self.database.transaction() as session:
            row = session.execute(
                select(
                    PluginInstance.health,
                    PluginInstance.health_since,
                    PluginInstance.health_latency_ms,
                    PluginInstance.consecutive_failures,
                    PluginInstance.plugin_name,
                    PluginInstance.tenant_id,
                )
                .where(PluginInstance.id == instance_id)
                .with_for_update()
            ).one_or_none()
            if row is None:  # retired meanwhile
                return None
            before = Circuit(row.health, row.health_since, row.consecutive_failures)
            after = next_circuit(before, observation.status, now, threshold)
            latency_ms = observation.latency_ms
            session.add(
                PluginHealth(
                    instance_id=instance_id,
                    status=observation.status.value,
                    message=observation.message,
                    latency_ms=latency_ms or 0.0,
                    checked_at=now,
                )
            )
            session.execute(
                update(PluginInstance)
                .where(PluginInstance.id == instance_id)
                .values(
                    health=after.health,
                    health_since=after.since,
                    health_message=observation.message,
                    health_latency_ms=row.health_latency_ms if latency_ms is None else latency_ms,
                    consecutive_failures=after.consecutive_failures,
                    last_checked_at=now,
                    # health is not an operator's change: keep updated_at, version as they are
                    updated_at=PluginInstance.updated_at,
                )
            )
            transition = Transition(instance_id, before, after)
            outbox_id = None
            if transition.health_changed:
                event = add_event(
                    session,
                    HealthChangedEvent(
                        instance_id=instance_id,
                        plugin_name=row.plugin_name,
                        tenant_id=row.tenant_id,
                        previous=before.health,
                        current=after.health,
                        message=observation.message,
                        occurred_at=now,
                    ),
                )
                session.flush()
                outbox_id = event.id
            if routability_changed(before, after):
                PluginRegistry._bump(session)  # workers' caches reload: routing changes
        if transition.health_changed:
            log.log(
                logging.WARNING if after.health == UNHEALTHY else logging.INFO,
                "provider instance %s: health %s -> %s (%s)",
                instance_id,
                before.health,
                after.health,
                observation.message,
            )
        return transition, outbox_id

    def _last_started(self) -> datetime | None:
        with self.database.sessions() as session:
            return session.execute(
                select(HealthRun.started_at).where(HealthRun.name == LOCK_NAME)
            ).scalar_one_or_none()

    def _finished(self, started: datetime, checked: int) -> None:
        with self.database.transaction() as session:
            run = session.get(HealthRun, LOCK_NAME)
            if run is None:
                run = HealthRun(name=LOCK_NAME)
                session.add(run)
            run.started_at, run.finished_at, run.checked = started, self.clock(), checked

    # -- alerts ------------------------------------------------------------------

    def raise_alerts(self, now: datetime, only: set[uuid.UUID] | None = None) -> list[Alert]:
        """Decide and record the alerts due now (each with its ``alert.raised`` event).

        Each decision is taken again under the instance's row lock, so a health run
        and a live failure deciding at once send one alert, not two.
        """
        views = self.registry.list_instances()
        with self.database.sessions() as session:
            memories = {
                row.instance_id: _memory(row) for row in session.scalars(select(AlertState))
            }
        cooldown_s = self.settings.alert_cooldown_s
        raised: list[Alert] = []
        outbox: list[int] = []
        for view in views:
            if only is not None and view.id not in only:
                continue
            memory = memories.get(view.id)
            condition = alerts.condition_of(view.is_active, view.status, view.health)
            decision = alerts.decide_alert(memory, condition, now, cooldown_s, view.health_since)
            if decision.kind is None and decision.memory == memory:
                continue
            with self.database.transaction() as session:
                result = self._decide_locked(session, view, views, now)
                if result is not None:
                    alert, outbox_id = result
                    raised.append(alert)
                    outbox.append(outbox_id)
        publish_now(self.database, self.publisher, outbox)
        return raised

    def _decide_locked(
        self, session: Session, view: InstanceView, views: list[InstanceView], now: datetime
    ) -> tuple[Alert, int] | None:
        row = session.execute(
            select(PluginInstance).where(PluginInstance.id == view.id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            return None
        fresh = view.model_copy(
            update={
                "is_active": row.is_active,
                "status": row.status,
                "status_message": row.status_message,
                "health": row.health,
                "health_since": row.health_since,
                "health_message": row.health_message,
                "consecutive_failures": row.consecutive_failures,
            }
        )
        stored = session.get(AlertState, view.id)
        memory = _memory(stored) if stored is not None else None
        condition = alerts.condition_of(fresh.is_active, fresh.status, fresh.health)
        since = fresh.health_since if condition is alerts.Condition.UNHEALTHY else now
        decision = alerts.decide_alert(
            memory, condition, now, self.settings.alert_cooldown_s, since
        )
        if decision.memory is None:
            if stored is not None:
                session.execute(delete(AlertState).where(AlertState.instance_id == view.id))
        elif stored is None:
            session.add(AlertState(instance_id=view.id, **_columns(decision.memory)))
        else:
            for name, value in _columns(decision.memory).items():
                setattr(stored, name, value)
        if decision.kind is None or condition is None:
            return None
        others = [fresh if v.id == fresh.id else v for v in views]
        effect = alerts.routing_effect(
            fresh, others, self._currencies(fresh), self.registry.supports
        )
        alert = alerts.compose_alert(
            decision.kind,
            fresh,
            condition,
            memory if decision.kind is alerts.AlertKind.RECOVERED else decision.memory,
            effect,
            now,
        )
        event = add_event(session, alert.event())
        session.flush()
        return alert, event.id

    def _currencies(self, view: InstanceView) -> list[str]:
        if view.currencies:
            return list(view.currencies)
        try:
            return sorted(self.registry.catalogue.get(view.plugin_name).supported_currencies)
        except Exception:
            return []


def _memory(row: AlertState) -> AlertMemory:
    return AlertMemory(alerts.Condition(row.condition), row.since, row.alerted_at, row.reminders)


def _columns(memory: AlertMemory) -> dict[str, Any]:
    return {
        "condition": memory.condition.value,
        "since": memory.since,
        "alerted_at": memory.alerted_at,
        "reminders": memory.reminders,
    }


def _count_check(view: InstanceView, observation: Observation) -> None:
    metrics.HEALTH_CHECKS.labels(
        view.plugin_name, view.metric_label, observation.status.value
    ).inc()
    if observation.latency_ms is not None:
        metrics.PROVIDER_CALL_SECONDS.labels(view.plugin_name, "health").observe(
            observation.latency_ms / 1000
        )


# -- the public entry points (wired to this process's runtime) -------------------


def monitor() -> HealthMonitor:
    from workers import runtime
    from workers.core.app import app

    return HealthMonitor(
        get_database(),
        runtime.registry(),
        runtime.provider_loop(),
        EventPublisher(app),
        get_settings(),
    )


def record_live_failure(instance: InstanceView, message: str) -> None:
    """A live payment found ``instance`` unavailable (counts toward its circuit).

    Never raises: health bookkeeping must not break the payment that noticed.
    """
    try:
        monitor().record_live_failure(instance.id, message)
    except Exception:
        log.exception("could not record a live failure of %s", instance.label)


def check_instance_now(instance_id: uuid.UUID) -> Observation:
    """Check one instance now (the console's "Test connection")."""
    return monitor().check_one(instance_id)


def health_check_all(*, force: bool = False) -> dict[str, Any]:
    """The beat task's body: check every instance now (``force``: ignore the
    recent-run guard, as ``tender health --check`` does)."""
    return monitor().run(force=force)
