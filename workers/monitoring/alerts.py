"""Ops alerts for provider health: when to alert (pure rules), what to say, where to send.

When (:func:`decide_alert`, data in, decision out): one alert when an active
instance goes bad (``unhealthy``, or ``error`` when its configuration was rejected),
one when it recovers, and nothing while the state holds except a reminder every
``alert_cooldown_s``. What was last alerted per instance lives in ``alert_state``.

What (:func:`compose_alert`): which instance, what is wrong, since when, and what
routing does about it, computed with :func:`registry.routing.resolve_route` for the
instance's tenant and currencies ("payments in NGN now go to Backup"). When no usable
instance is left for a currency, the alert is **critical**: payments in it will fail.

Where (:func:`sinks_from_settings`): the log always; a Slack-compatible webhook
(``TENDER_ALERT_WEBHOOK_URL``, JSON ``{"text": ...}``) and email over SMTP
(``TENDER_ALERT_SMTP_HOST``/``_PORT``, ``_EMAIL_FROM``, ``_EMAIL_TO``) when set. Each
sink is tried ``alert_delivery_attempts`` times with exponential backoff; a sink
that still fails is logged and skipped. :func:`deliver` never raises.
"""

from __future__ import annotations

import logging
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum
from typing import Literal, Protocol
from urllib.parse import urlsplit

import httpx
from sqlalchemy import ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from config.settings import Settings
from registry.db import Base, UTCDateTime
from registry.instances import InstanceStatus, InstanceView
from registry.routing import resolve_route
from workers.ledger.outbox import AlertEvent

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
RETRY_BACKOFF_S = 0.5  # first pause between attempts at one sink; doubles each time
MAX_PARALLEL_ALERTS = 8  # alerts delivered at once by one health run
CURRENCIES_SHOWN = 8  # longer currency lists are cut to this many plus "(+N more)"


class Condition(StrEnum):
    """What an alert is about. Only the bad ones are remembered."""

    OK = "ok"
    UNHEALTHY = "unhealthy"  # circuit open: health checks or live payments keep failing
    ERROR = "error"  # configuration or keys rejected: needs an operator


class AlertKind(StrEnum):
    DOWN = "down"
    REMINDER = "reminder"
    RECOVERED = "recovered"


class AlertState(Base):
    """The last alert sent for an instance that is (still) bad. No row: nothing pending."""

    __tablename__ = "alert_state"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("plugin_instances.id", ondelete="CASCADE"), primary_key=True
    )
    condition: Mapped[str] = mapped_column(String(20))
    since: Mapped[datetime] = mapped_column(UTCDateTime)  # when the condition began
    alerted_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the last alert or reminder
    reminders: Mapped[int] = mapped_column(Integer, default=0)


# -- when: the pure rules ----------------------------------------------------------


@dataclass(frozen=True)
class AlertMemory:
    """What was last alerted for one instance (the row of ``alert_state``, as data)."""

    condition: Condition
    since: datetime
    alerted_at: datetime
    reminders: int = 0


@dataclass(frozen=True)
class AlertDecision:
    kind: AlertKind | None  # None: send nothing
    memory: AlertMemory | None  # what to remember from now on (None: forget)


def condition_of(is_active: bool, status: str, health: str) -> Condition | None:
    """The alertable condition of an instance; None for an instance switched off
    (nobody routes to it, so there is nothing to alert about)."""
    if not is_active:
        return None
    if status == InstanceStatus.ERROR:
        return Condition.ERROR
    if health == "unhealthy":
        return Condition.UNHEALTHY
    return Condition.OK


def decide_alert(
    memory: AlertMemory | None,
    condition: Condition | None,
    now: datetime,
    cooldown_s: float,
    since: datetime | None = None,
) -> AlertDecision:
    """One alert per change of condition, reminders after ``cooldown_s``, else nothing.

    ``since`` is when the current condition began (default ``now``).
    """
    if condition is None:  # switched off: stop watching, without a "recovered" alert
        return AlertDecision(None, None)
    if condition is Condition.OK:
        return AlertDecision(AlertKind.RECOVERED if memory else None, None)
    if memory is None or memory.condition is not condition:
        return AlertDecision(AlertKind.DOWN, AlertMemory(condition, since or now, now))
    if (now - memory.alerted_at).total_seconds() >= cooldown_s:
        reminded = AlertMemory(condition, memory.since, now, memory.reminders + 1)
        return AlertDecision(AlertKind.REMINDER, reminded)
    return AlertDecision(None, memory)


# -- what: the text ----------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    severity: Severity
    title: str
    text: str
    instance_id: uuid.UUID | None = None
    tenant_id: str | None = None

    def event(self) -> AlertEvent:
        return AlertEvent(
            severity=self.severity,
            title=self.title,
            text=self.text,
            instance_id=self.instance_id,
            tenant_id=self.tenant_id,
        )


@dataclass(frozen=True)
class RoutingEffect:
    """Where payments in each of an instance's currencies go now."""

    # first-choice instances (labels, those sharing the lowest priority) -> currencies
    targets: dict[tuple[str, ...], list[str]]
    failing: list[str]  # currencies with no usable instance left: payments will fail
    currencies: list[str]  # every currency considered


def routing_effect(
    instance: InstanceView,
    instances: Sequence[InstanceView],
    currencies: Iterable[str],
    supports: Callable[[str, str], bool],
) -> RoutingEffect:
    """Resolve the route for ``instance``'s tenant in each currency, as things stand."""
    targets: dict[tuple[str, ...], list[str]] = {}
    failing: list[str] = []
    considered = sorted(set(currencies))
    for currency in considered:
        route = resolve_route(
            instances,
            tenant_id=instance.tenant_id,
            currency=currency,
            idempotency_key="",
            supports=supports,
            provider_type=instance.provider_type,
        )
        if not route:
            failing.append(currency)
            continue
        first = tuple(sorted(v.label for v in route if v.priority == route[0].priority))
        targets.setdefault(first, []).append(currency)
    return RoutingEffect(targets, failing, considered)


def _codes(codes: Sequence[str], every: Sequence[str]) -> str:
    if len(codes) > 1 and len(codes) == len(every):
        return f"all {len(codes)} of its currencies"
    shown = ", ".join(codes[:CURRENCIES_SHOWN])
    more = len(codes) - CURRENCIES_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown


def describe_routing(effect: RoutingEffect, *, now_word: str = "now ") -> str:
    if not effect.currencies:
        return "Routing: unknown (the instance's plugin is not installed here)."
    parts = [
        f"payments in {_codes(codes, effect.currencies)} {now_word}go to {' or '.join(labels)}"
        for labels, codes in sorted(effect.targets.items(), key=lambda item: item[1])
    ]
    if effect.failing:
        parts.append(
            f"payments in {_codes(effect.failing, effect.currencies)} will FAIL:"
            " no usable provider is left"
        )
    return "Routing: " + "; ".join(parts) + "."


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "an unknown time"


def _scope(tenant_id: str | None) -> str:
    return f"tenant {tenant_id}" if tenant_id else "every tenant without its own providers"


def compose_alert(
    kind: AlertKind,
    instance: InstanceView,
    condition: Condition,
    memory: AlertMemory | None,
    effect: RoutingEffect,
    now: datetime,
) -> Alert:
    """The alert for ``kind``: ``condition`` is the current one, ``memory`` what was
    last alerted (for a recovery, the condition it recovered from)."""
    who = f"{instance.label} for {_scope(instance.tenant_id)}"
    if kind is AlertKind.RECOVERED:
        was = memory.condition.value if memory else "unhealthy"
        text = (
            f"{who} recovered at {_when(now)}: health {instance.health}"
            f"{f' ({instance.health_message})' if instance.health_message else ''},"
            f" after being {was} since {_when(memory.since if memory else None)}. "
            + describe_routing(effect, now_word="")
        )
        title = f"Provider recovered: {instance.label}"
        return Alert("info", title, text, instance.id, instance.tenant_id)

    since = memory.since if memory else now
    if condition is Condition.ERROR:
        problem = (
            f"{who} was marked error at {_when(since)}: its configuration or keys were"
            f" rejected ({instance.status_message or 'no detail'}). It is out of routing"
            " until an operator fixes its configuration."
        )
        title = f"Provider configuration rejected: {instance.label}"
    else:
        problem = (
            f"{who} is unhealthy since {_when(since)}: {instance.health_message or 'no detail'}"
            f" ({instance.consecutive_failures} consecutive failures). Its circuit is open:"
            " routing skips it until a health check passes."
        )
        title = f"Provider unhealthy: {instance.label}"
    severity: Severity = "warning"
    if effect.failing:
        severity = "critical"
        title = (
            f"CRITICAL: payments in {_codes(effect.failing, effect.currencies)} for"
            f" {_scope(instance.tenant_id)} will fail ({instance.label} is {condition.value})"
        )
    if kind is AlertKind.REMINDER:
        title = f"Reminder: {title}"
        problem = f"Still {condition.value}. {problem}"
    return Alert(
        severity, title, f"{problem} {describe_routing(effect)}", instance.id, instance.tenant_id
    )


# -- where: the sinks --------------------------------------------------------------


class AlertDeliveryError(Exception):
    """A sink could not deliver an alert (the message never holds a secret URL)."""


class AlertSink(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert`` or raise."""


class LogSink:
    name = "log"
    _levels = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}

    def send(self, alert: Alert) -> None:
        log.log(self._levels[alert.severity], "ALERT %s: %s", alert.title, alert.text)


class WebhookSink:
    """POST ``{"text": ...}`` (Slack's incoming-webhook shape) to ``url``."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # the URL of a Slack webhook is itself a secret
        return f"<WebhookSink {urlsplit(self.url).netloc}>"

    def send(self, alert: Alert) -> None:
        marker = {"info": "✅", "warning": "⚠️", "critical": "🚨"}[alert.severity]
        where = urlsplit(self.url).netloc
        # httpx's own messages quote the full URL; ours name only the host.
        try:
            response = httpx.post(
                self.url,
                json={"text": f"{marker} *{alert.title}*\n{alert.text}"},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"webhook at {where}: {type(exc).__name__}") from None
        if response.is_error:
            raise AlertDeliveryError(f"webhook at {where} answered HTTP {response.status_code}")


class EmailSink:
    """One plain-text email per alert, over SMTP (no auth: a local relay)."""

    name = "email"

    def __init__(
        self, host: str, port: int, sender: str, recipients: Sequence[str], timeout_s: float
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.timeout_s = timeout_s

    def send(self, alert: Alert) -> None:
        message = EmailMessage()
        message["Subject"] = f"[tender {alert.severity}] {alert.title}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(alert.text)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            smtp.send_message(message)


def sinks_from_settings(settings: Settings) -> list[AlertSink]:
    sinks: list[AlertSink] = [LogSink()]
    if settings.alert_webhook_url:
        sinks.append(WebhookSink(settings.alert_webhook_url, settings.alert_delivery_timeout_s))
    if settings.alert_smtp_host and settings.alert_email_to:
        sinks.append(
            EmailSink(
                settings.alert_smtp_host,
                settings.alert_smtp_port,
                settings.alert_email_from,
                settings.alert_email_to,
                settings.alert_delivery_timeout_s,
            )
        )
    return sinks


def deliver(
    alert: Alert,
    sinks: Sequence[AlertSink],
    *,
    attempts: int = 3,
    backoff_s: float = RETRY_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, bool]:
    """Send ``alert`` to every sink, retrying each; return which succeeded. Never raises."""
    delivered: dict[str, bool] = {}
    for sink in sinks:
        delivered[sink.name] = False
        for attempt in range(1, attempts + 1):
            try:
                sink.send(alert)
            except Exception as exc:
                log.warning(
                    "alert sink %s failed (attempt %d of %d): %s: %s",
                    sink.name,
                    attempt,
                    attempts,
                    type(exc).__name__,
                    exc,
                )
                if attempt < attempts:
                    sleep(backoff_s * 2 ** (attempt - 1))
                continue
            delivered[sink.name] = True
            break
        else:
            log.error(
                "alert %r not delivered to %s after %d attempts", alert.title, sink.name, attempts
            )
    return delivered


def deliver_all(alerts: Sequence[Alert], sinks: Sequence[AlertSink], settings: Settings) -> None:
    """Deliver several alerts side by side (a dead sink's retries are paid once, not per
    alert) and wait for them."""
    if not alerts:
        return
    with ThreadPoolExecutor(max_workers=min(len(alerts), MAX_PARALLEL_ALERTS)) as pool:
        for alert in alerts:
            pool.submit(deliver, alert, sinks, attempts=settings.alert_delivery_attempts)


def deliver_in_background(
    alerts: Sequence[Alert], sinks: Sequence[AlertSink], settings: Settings
) -> threading.Thread | None:
    """Deliver off the caller's thread (a payment must not wait on a slow webhook)."""
    if not alerts:
        return None
    thread = threading.Thread(
        target=deliver_all,
        args=(list(alerts), list(sinks), settings),
        name="tender-alerts",
        daemon=True,
    )
    thread.start()
    return thread
