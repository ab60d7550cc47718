"""What the console's pages show, read from the registry and the ledger: per-instance
figures of the last 24 hours, the A/B split, health history, alerts, payment search and a
payment's timeline. Reads only; every figure is bounded (``LIMIT``) so a page stays cheap
however large the ledger grows.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from providers.base import utcnow
from providers.money import format_amount
from registry.db import Database
from registry.instances import InstanceView
from registry.models import PluginHealth
from workers.ledger.outbox import EventType, OutboxEvent
from workers.ledger.records import Payment, PaymentAttempt, Refund

WINDOW = timedelta(hours=24)
MAX_LATENCIES = 20_000  # attempts read for the p95s of one page
HEALTH_POINTS = 60  # checks drawn in an instance's chart


@dataclass(frozen=True)
class Figures:
    """An instance's last 24 hours."""

    succeeded: int = 0
    declined: int = 0
    unknown: int = 0
    p95_ms: float | None = None


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def figures(database: Database, now: datetime | None = None) -> dict[uuid.UUID, Figures]:
    """Succeeded / declined / unknown payments and p95 provider-call latency per instance."""
    since = (now or utcnow()) - WINDOW
    counts: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
    latencies: dict[uuid.UUID, list[float]] = defaultdict(list)
    with database.sessions() as session:
        for instance_id, status, count in session.execute(
            select(Payment.instance_id, Payment.status, func.count())
            .where(Payment.updated_at >= since, Payment.instance_id.is_not(None))
            .group_by(Payment.instance_id, Payment.status)
        ):
            if instance_id is not None:
                counts[instance_id][status] = count
        for instance_id, latency in session.execute(
            select(PaymentAttempt.instance_id, PaymentAttempt.latency_ms)
            .where(PaymentAttempt.created_at >= since, PaymentAttempt.instance_id.is_not(None))
            .order_by(PaymentAttempt.id.desc())
            .limit(MAX_LATENCIES)
        ):
            if instance_id is not None:
                latencies[instance_id].append(latency)
    settled = ("succeeded", "refunded", "partially_refunded")
    return {
        instance_id: Figures(
            succeeded=sum(counts[instance_id].get(s, 0) for s in settled),
            declined=counts[instance_id].get("failed", 0),
            unknown=counts[instance_id].get("unknown", 0),
            p95_ms=_p95(latencies[instance_id]),
        )
        for instance_id in counts.keys() | latencies.keys()
    }


@dataclass(frozen=True)
class Share:
    instance: InstanceView
    percent: float


@dataclass
class Split:
    """How new payments of one tenant and currency divide among the instances that route
    first (the lowest priority among the routable ones), by weight."""

    tenant: str
    currency: str
    shares: list[Share] = field(default_factory=list)


def splits(views: list[InstanceView], supported: dict[str, frozenset[str]]) -> list[Split]:
    """The A/B split per tenant and currency, as the router would draw it now: one bar per
    currency some instance names, and one for the currencies none names."""
    by_tenant: dict[str, list[InstanceView]] = defaultdict(list)
    for view in views:
        if view.routable:
            by_tenant[view.tenant_id or "(global)"].append(view)
    result: list[Split] = []
    for tenant, candidates in sorted(by_tenant.items()):
        named = sorted({c for v in candidates for c in v.currencies})
        for currency in [*named, None]:
            if currency is None:
                takers = [v for v in candidates if not v.currencies]
                label = "other currencies" if named else "every currency"
            else:
                takers = [
                    v
                    for v in candidates
                    if currency in v.currencies
                    or (not v.currencies and currency in supported.get(v.plugin_name, ()))
                ]
                label = currency
            if not takers:
                continue
            top = min(v.priority for v in takers)
            first = [v for v in takers if v.priority == top]
            if len(first) < 2:
                continue  # no split to draw: one instance takes them all
            total = sum(max(v.weight, 0) for v in first) or 1
            shares = [Share(v, 100.0 * max(v.weight, 0) / total) for v in first]
            result.append(Split(tenant, label, shares))
    return result


@dataclass(frozen=True)
class HealthPoint:
    status: str
    latency_ms: float
    message: str
    checked_at: datetime


def health_history(database: Database, instance_id: uuid.UUID) -> list[HealthPoint]:
    """The instance's last checks, oldest first."""
    with database.sessions() as session:
        rows = session.execute(
            select(PluginHealth)
            .where(PluginHealth.instance_id == instance_id)
            .order_by(PluginHealth.checked_at.desc())
            .limit(HEALTH_POINTS)
        ).scalars()
        points = [HealthPoint(r.status, r.latency_ms, r.message, r.checked_at) for r in rows]
    return list(reversed(points))


def health_chart(points: list[HealthPoint], width: int = 600, height: int = 120) -> dict[str, Any]:
    """Coordinates for an inline SVG of latency over time, each check a dot coloured by its
    status (the template draws it; no script)."""
    if not points:
        return {"width": width, "height": height, "line": "", "dots": [], "top_ms": 0}
    top = max(max(p.latency_ms for p in points), 1.0)
    step = (width - 20) / max(len(points) - 1, 1)
    dots = [
        {
            "x": round(10 + i * step, 1),
            "y": round(height - 10 - (height - 20) * p.latency_ms / top, 1),
            "status": p.status,
            "title": f"{p.checked_at:%Y-%m-%d %H:%M:%S} {p.status} {p.latency_ms:.0f} ms {p.message}",
        }
        for i, p in enumerate(points)
    ]
    line = " ".join(f"{d['x']},{d['y']}" for d in dots)
    return {"width": width, "height": height, "line": line, "dots": dots, "top_ms": round(top)}


@dataclass(frozen=True)
class AlertRow:
    severity: str
    title: str
    text: str
    created_at: datetime


def recent_alerts(
    database: Database,
    instance_id: uuid.UUID | None = None,
    limit: int = 10,
    *,
    tenant_id: str | None = None,
) -> list[AlertRow]:
    """The latest ``alert.raised`` events (of one instance, when given; of one tenant's,
    for a caller bound to ``tenant_id``)."""
    with database.sessions() as session:
        rows = session.execute(
            select(OutboxEvent.payload, OutboxEvent.created_at)
            .where(OutboxEvent.event_type == EventType.ALERT_RAISED.value)
            .order_by(OutboxEvent.id.desc())
            .limit(500)
        ).all()
    found = [
        AlertRow(
            str(payload.get("severity", "")),
            str(payload.get("title", "")),
            str(payload.get("text", "")),
            created_at,
        )
        for payload, created_at in rows
        if (instance_id is None or payload.get("instance_id") == str(instance_id))
        and (tenant_id is None or payload.get("tenant_id") == tenant_id)
    ]
    return found[:limit]


@dataclass(frozen=True)
class PaymentRow:
    id: uuid.UUID
    order_id: str
    amount: str
    status: str
    provider: str | None
    reference: str
    updated_at: datetime


def _row(payment: Payment) -> PaymentRow:
    return PaymentRow(
        payment.id,
        payment.order_id,
        format_amount(payment.amount_minor, payment.currency),
        payment.status,
        payment.plugin_name,
        payment.reference,
        payment.updated_at,
    )


def recent_payments(
    database: Database,
    instance_id: uuid.UUID | None = None,
    limit: int = 20,
    *,
    tenant_id: str | None = None,
) -> list[PaymentRow]:
    """The latest payments (of one instance; of one tenant, for a bound caller)."""
    query = select(Payment).order_by(Payment.updated_at.desc()).limit(limit)
    if instance_id is not None:
        query = query.where(Payment.instance_id == instance_id)
    if tenant_id is not None:
        query = query.where(Payment.tenant_id == tenant_id)
    with database.sessions() as session:
        return [_row(p) for p in session.execute(query).scalars()]


def search_payments(
    database: Database, text: str, limit: int = 50, *, tenant_id: str | None = None
) -> list[PaymentRow]:
    """Payments whose id, order id, provider reference or idempotency key is ``text`` (of
    one tenant, for a bound caller)."""
    text = text.strip()[:200]
    if not text or "\x00" in text:
        return []
    matches = [Payment.order_id == text, Payment.reference == text, Payment.idempotency_key == text]
    with contextlib.suppress(ValueError):  # not a payment id: the other columns only
        matches.append(Payment.id == uuid.UUID(text))
    with database.sessions() as session:
        rows = session.execute(
            select(Payment)
            .where(
                or_(*matches), *([Payment.tenant_id == tenant_id] if tenant_id is not None else [])
            )
            .order_by(Payment.created_at.desc())
            .limit(limit)
        ).scalars()
        return [_row(p) for p in rows]


@dataclass(frozen=True)
class Moment:
    """One line of a payment's timeline."""

    at: datetime
    kind: str  # attempt | event | refund
    title: str
    detail: str


def timeline(database: Database, payment_id: uuid.UUID) -> list[Moment]:
    """The payment's provider attempts, events and refunds, oldest first."""
    with database.sessions() as session:
        attempts = session.execute(
            select(PaymentAttempt)
            .where(PaymentAttempt.payment_id == payment_id)
            .order_by(PaymentAttempt.id)
        ).scalars()
        moments = [
            Moment(
                a.created_at,
                "attempt",
                f"{a.operation} at {a.plugin_name}: {a.outcome}",
                " ".join(
                    part
                    for part in (
                        a.error_code or "",
                        a.message or "",
                        f"{a.latency_ms:.0f} ms",
                        f"as {a.reference}" if a.reference else "",
                    )
                    if part
                ),
            )
            for a in attempts
        ]
        events = session.execute(
            select(OutboxEvent.event_type, OutboxEvent.payload, OutboxEvent.created_at)
            .where(OutboxEvent.payload["payment_id"].as_string() == str(payment_id))
            .order_by(OutboxEvent.id)
            .limit(200)
        ).all()
        moments += [
            Moment(created_at, "event", event_type, str(payload.get("status", "")))
            for event_type, payload, created_at in events
        ]
        refunds = session.execute(
            select(Refund).where(Refund.payment_id == payment_id).order_by(Refund.created_at)
        ).scalars()
        moments += [
            Moment(r.created_at, "refund", f"refund {r.status}", f"{r.amount_minor} minor units")
            for r in refunds
        ]
    return sorted(moments, key=lambda m: m.at)


_LINE_COLOURS = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2")


def rates_chart(
    history: list[dict[str, Any]], names: dict[str, str], width: int = 600, height: int = 140
) -> dict[str, Any]:
    """Hourly approval rates per instance (workers.payments.experiments.approval_history)
    as SVG polylines: one per instance, 0-100% bottom to top, hours left to right."""
    hours = sorted({row["hour"] for row in history})
    if not hours:
        return {"lines": [], "width": width, "height": height, "hours": []}
    step = width / max(len(hours) - 1, 1)
    by_instance: dict[str, list[tuple[int, float, int]]] = {}
    for row in history:
        key = str(row["instance_id"])
        by_instance.setdefault(key, []).append(
            (hours.index(row["hour"]), row["rate"], row["attempts"])
        )
    lines = []
    for n, (instance_id, points) in enumerate(sorted(by_instance.items())):
        lines.append(
            {
                "name": names.get(instance_id, instance_id[:8]),
                "colour": _LINE_COLOURS[n % len(_LINE_COLOURS)],
                "points": " ".join(
                    f"{i * step:.1f},{(1 - rate) * (height - 10) + 5:.1f}" for i, rate, _ in points
                ),
                "last": f"{points[-1][1]:.0%} of {points[-1][2]}",
            }
        )
    return {"lines": lines, "width": width, "height": height, "hours": hours}
