"""``GET /metrics``: the API process's Prometheus metrics, and the deployment's state read
from the database at scrape time (health and circuits per instance, the ledger's open
payments and their age, the outbox backlog). Workers serve their own counters on their own
port (``workers.core.metrics``); the state is here so that it is counted once, not once
per worker. Needs the ``read`` scope when auth is on.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
import logging
import threading
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from providers.base import utcnow
from registry.db import get_database
from registry.instances import metric_instance
from registry.models import PluginHealth, PluginInstance
from registry.tokens import Scope
from surfaces.http.auth import require, tenant_of
from workers.ledger.outbox import OutboxEvent
from workers.ledger.records import Payment
from workers.ledger.states import PaymentState

log = logging.getLogger(__name__)

OPEN_STATES = (
    PaymentState.REQUESTED.value,
    PaymentState.PROCESSING.value,
    PaymentState.PENDING.value,
    PaymentState.UNKNOWN.value,
)
HEALTH_VALUE = {"healthy": 1.0, "degraded": 0.5, "unhealthy": 0.0}  # unknown: -1


class LedgerCollector(Collector):
    """Gauges read from the database on each scrape (a few grouped queries)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except Exception as exc:  # a scrape must answer even with the database away
            log.warning("metrics: could not read the database: %s", exc)

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        health = GaugeMetricFamily(
            "tender_instance_health",
            "Instance health: 1 healthy, 0.5 degraded, 0 unhealthy, -1 not checked yet.",
            labels=["provider", "instance"],
        )
        circuit = GaugeMetricFamily(
            "tender_instance_circuit_open",
            "1 while the instance's circuit is open (routing skips it).",
            labels=["provider", "instance"],
        )
        age = GaugeMetricFamily(
            "tender_instance_last_healthy_check_age_seconds",
            "Seconds since the instance's last check that was not unhealthy.",
            labels=["provider", "instance"],
        )
        open_payments = GaugeMetricFamily(
            "tender_payments_open", "Payments in each non-final state.", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            "tender_payments_oldest_open_age_seconds",
            "Age of the oldest payment in each non-final state (stuck payments).",
            labels=["state"],
        )
        database = get_database()
        with database.sessions() as session:
            instances = session.execute(
                select(
                    PluginInstance.id,
                    PluginInstance.plugin_name,
                    PluginInstance.display_name,
                    PluginInstance.health,
                )
            ).all()
            last_good = dict(
                session.execute(
                    select(PluginHealth.instance_id, func.max(PluginHealth.checked_at))
                    .where(PluginHealth.status != "unhealthy")
                    .group_by(PluginHealth.instance_id)
                ).all()
            )
            states = session.execute(
                select(Payment.status, func.count(), func.min(Payment.updated_at))
                .where(Payment.status.in_(OPEN_STATES))
                .group_by(Payment.status)
            ).all()
            unpublished, oldest_event = session.execute(
                select(func.count(), func.min(OutboxEvent.created_at)).where(
                    OutboxEvent.published_at.is_(None)
                )
            ).one()
        for instance_id, plugin, display_name, status in instances:
            name = metric_instance(display_name, instance_id)
            health.add_metric([plugin, name], HEALTH_VALUE.get(status, -1.0))
            circuit.add_metric([plugin, name], 1.0 if status == "unhealthy" else 0.0)
            if instance_id in last_good:
                age.add_metric([plugin, name], (now - last_good[instance_id]).total_seconds())
        seen = {state: (count, first) for state, count, first in states}
        for state in OPEN_STATES:
            count, first = seen.get(state, (0, None))
            open_payments.add_metric([state], count)
            oldest.add_metric([state], (now - first).total_seconds() if first else 0.0)
        yield from (health, circuit, age, open_payments, oldest)
        backlog = GaugeMetricFamily(
            "tender_outbox_unpublished", "Result events waiting in the outbox."
        )
        backlog.add_metric([], unpublished)
        yield backlog
        lag = GaugeMetricFamily(
            "tender_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished event (outbox lag).",
        )
        lag.add_metric([], (now - oldest_event).total_seconds() if oldest_event else 0.0)
        yield lag


_registered = threading.Lock()
_collector: LedgerCollector | None = None


def register_ledger_collector() -> None:
    """Once per process (create_app may run more than once, in tests)."""
    global _collector
    with _registered:
        if _collector is None:
            _collector = LedgerCollector()
            REGISTRY.register(_collector)


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["operators"])

    @router.get(
        "/metrics",
        dependencies=[require(Scope.READ)],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    )
    def metrics(request: Request) -> Response:
        """Prometheus metrics of this process and the deployment's state: every tenant's
        instances, so for platform-wide tokens only (a tenant-bound one gets 403)."""
        if tenant_of(request) is not None:
            raise HTTPException(403, "metrics cover every tenant: a platform-wide token reads them")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
