"""Prometheus metrics: what each process counts as it works.

Every label set is bounded: provider (a plugin name), instance (an operator-chosen display
name and the instance's short id, ``Paystack NG#1f2e3d4c``: names need not be unique), outcome, operation, result; never a payment id, a reference, an amount or a secret.
States read from the database (health, circuits, the ledger's backlog, the outbox) are not
here: the API's ``/metrics`` reads them at scrape time (``surfaces.http.metrics``), once
for the deployment instead of once per worker.

Each worker process serves its own registry over HTTP (``TENDER_METRICS_PORT``; the worker
pool is threads, one process per core, so there is no prefork pool to aggregate with the
client's multiprocess mode). The API serves its own at ``/metrics``.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# Provider calls take from a few ms (a local fake) to the 30 s timeout.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

PAYMENTS_STARTED = Counter(
    "tender_payments_started",
    "Payments a worker began charging, by the instance routed to first.",
    ["provider", "instance"],
)
PAYMENTS_FINISHED = Counter(
    "tender_payments_finished",
    "Payments a worker finished, by the instance that decided them and the state reached.",
    ["provider", "instance", "outcome"],
)
FALLBACKS = Counter(
    "tender_fallbacks",
    "Hops past an instance that provably did not charge (unavailable, keys rejected).",
    ["provider", "instance"],
)
VERIFICATIONS = Counter(
    "tender_verifications",
    "Verifications with a provider after an ambiguous call, by what the provider said.",
    ["provider", "result"],
)
PROVIDER_CALL_SECONDS = Histogram(
    "tender_provider_call_seconds",
    "Provider call latency by operation (charge, verify, refund, health).",
    ["provider", "operation"],
    buckets=LATENCY_BUCKETS_S,
)
ROUTING_DECISIONS = Counter(
    "tender_routing_decisions",
    "New payments routed to each instance first: an A/B split, as it happens.",
    ["provider", "instance"],
)
RECONCILE_RUNS = Counter("tender_reconcile_runs", "Reconcile runs.")
RECONCILE_FIXED = Counter(
    "tender_reconcile_fixed",
    "Payments reconcile settled, by the state it set.",
    ["outcome"],
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "tender_outbox_publish_failures",
    "Event publishes that failed (the events stay in the outbox for the sweep).",
)
WEBHOOKS_RECEIVED = Counter(
    "tender_webhooks_received",
    "Provider webhooks by result: applied, duplicate, ignored, bad_signature, "
    "bad_payload, unknown_plugin, unverifiable.",
    ["provider", "result"],
)
HEALTH_CHECKS = Counter(
    "tender_health_checks",
    "Health checks run, by the status observed.",
    ["provider", "instance", "status"],
)

_served: set[int] = set()
_serving = threading.Lock()


def serve(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve this process's metrics at ``http://addr:port/metrics``. False (and a warning,
    never a crash) when the port is taken: a second worker on one host without its own
    ``TENDER_METRICS_PORT``."""
    with _serving:
        if port in _served:
            return True
        try:
            start_http_server(port, addr=addr)
        except OSError as exc:
            log.warning("metrics not served: port %d: %s (set TENDER_METRICS_PORT)", port, exc)
            return False
        _served.add(port)
        log.info("metrics at http://%s:%d/metrics", addr, port)
        return True
