"""Each instance's recent outcomes per segment, for success-rate routing (issue 38).

Counted from the ledger's own charge attempts (``payment_attempts`` with their
payments), so nothing is written for it on the payment path: one grouped query every
``TENDER_ROUTING_STATS_S`` per process, over the last ``TENDER_ROUTING_WINDOW_S`` of
attempts, run by a background thread only while a success-rate rule is active. Every
worker reads the same database, so all of them route on the same counts.

An attempt counts as **approved** (succeeded), **declined** by the issuer (failed with a
hard or soft decline code) or **failed** by the provider (unavailable, no answer, or a
decline its plugin calls an outage). Pending checkouts (the customer's to finish) and
configuration refusals are not counted: they say nothing of the instance.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from providers.base import DeclineKind, utcnow
from registry.adaptive import ArmStats
from registry.catalogue import Catalogue
from registry.db import Database
from workers.ledger.records import Payment, PaymentAttempt

log = logging.getLogger(__name__)

_COUNTED = ("succeeded", "failed", "unavailable", "unknown")


def _column(name: str) -> Any:
    """The SQL expression for a segment field."""
    if name in ("currency", "payment_method"):
        return getattr(Payment, name)
    if name.startswith("metadata."):
        return Payment.metadata_[name[9:]].as_string()
    return Payment.route_facts[name].as_string()  # billing_country, card_brand


def classify(outcome: str, plugin_name: str, code: str | None, catalogue: Catalogue) -> str | None:
    """approved, declined or failed; None: not counted."""
    if outcome == "succeeded":
        return "approved"
    if outcome in ("unavailable", "unknown"):
        return "failed"
    if outcome == "failed":
        try:
            kind = catalogue.get(plugin_name).decline_kind(code)
        except Exception:
            kind = DeclineKind.HARD
        return "failed" if kind is DeclineKind.OUTAGE else "declined"
    return None


def read_window(
    database: Database,
    catalogue: Catalogue,
    segments: set[tuple[str, ...]],
    window_s: float,
) -> dict[tuple[str, ...], dict[tuple[tuple[Any, ...], uuid.UUID], ArmStats]]:
    """For each segment (its fields), the windowed outcomes by (its values, instance)."""
    fields = sorted({name for segment in segments for name in segment})
    columns = [_column(name).label(f"f{i}") for i, name in enumerate(fields)]
    query = (
        select(
            PaymentAttempt.instance_id,
            PaymentAttempt.plugin_name,
            PaymentAttempt.outcome,
            PaymentAttempt.error_code,
            *columns,
            func.count().label("n"),
        )
        .join(Payment, Payment.id == PaymentAttempt.payment_id)
        .where(
            PaymentAttempt.operation == "charge",
            PaymentAttempt.outcome.in_(_COUNTED),
            PaymentAttempt.created_at >= utcnow() - timedelta(seconds=window_s),
        )
        .group_by(
            PaymentAttempt.instance_id,
            PaymentAttempt.plugin_name,
            PaymentAttempt.outcome,
            PaymentAttempt.error_code,
            *columns,
        )
    )
    found: dict[tuple[str, ...], dict[tuple[tuple[Any, ...], uuid.UUID], ArmStats]] = {
        segment: defaultdict(ArmStats) for segment in segments
    }
    with database.sessions() as session:
        rows = session.execute(query).all()
    for row in rows:
        kind = classify(row.outcome, row.plugin_name, row.error_code, catalogue)
        if kind is None or row.instance_id is None:
            continue
        values = {name: getattr(row, f"f{i}") for i, name in enumerate(fields)}
        counted = ArmStats(**{kind: int(row.n)})
        for segment, stats in found.items():
            key = (tuple(values[name] for name in segment), row.instance_id)
            stats[key] = stats[key] + counted
    return {segment: dict(stats) for segment, stats in found.items()}


class OutcomeWindow:
    """The registry's ``outcomes`` reader, kept fresh by a background thread while
    success-rate rules are active (started on the first read)."""

    def __init__(
        self,
        database: Database,
        catalogue: Catalogue,
        segments: Callable[[], set[tuple[str, ...]]],
        *,
        window_s: float,
        refresh_s: float,
    ) -> None:
        self._database = database
        self._catalogue = catalogue
        self._segments = segments
        self.window_s = window_s
        self.refresh_s = refresh_s
        self._stats: dict[tuple[str, ...], dict[tuple[tuple[Any, ...], uuid.UUID], ArmStats]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __call__(
        self, fields: tuple[str, ...], values: tuple[Any, ...], instance_id: uuid.UUID
    ) -> ArmStats:
        if self._thread is None:
            self._start()
        by_key = self._stats.get(fields)
        if by_key is None:
            return ArmStats()
        return by_key.get((values, instance_id)) or ArmStats()

    def refresh(self) -> None:
        """Read the window now (the thread's step; tests call it directly)."""
        segments = self._segments()
        if not segments:
            self._stats = {}
            return
        self._stats = read_window(self._database, self._catalogue, segments, self.window_s)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self.refresh()  # the first payment routes on counts, not on none
            self._thread = threading.Thread(target=self._run, name="tender-outcomes", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            started = time.monotonic()
            try:
                self.refresh()
            except Exception as exc:  # a database blip: keep the last counts
                log.warning("routing outcomes not refreshed: %s", exc)
            else:
                log.debug(
                    "routing outcomes refreshed in %.1f ms", (time.monotonic() - started) * 1000
                )

    def stop(self) -> None:
        self._stop.set()
