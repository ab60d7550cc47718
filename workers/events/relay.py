"""Relay outbox rows to the topic exchange ``tender.events`` (routing key = event type).

Two paths, both at least once: the worker hands a payment's event to its process's
:class:`EventRelay` right after committing it (published within milliseconds, marked
published in batches), and the beat's ``relay_outbox`` sweeps anything left
unpublished (broker down, worker killed between commit and publish). A durable queue ``tender.events.all`` bound to ``#`` is declared with the
exchange, so events wait there even before any consumer has bound a queue.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.pools import producers
from sqlalchemy import select

from config.settings import get_settings
from providers.base import utcnow
from registry.db import Database
from workers.core import metrics
from workers.core.threads import in_helper_thread, niced
from workers.events.broker import OutageLog, reuse_one_client
from workers.ledger.group_commit import LedgerWriter, OutboxItem
from workers.ledger.outbox import DEFAULT_QUEUE, EXCHANGE, OutboxEvent

log = logging.getLogger(__name__)
_outage = OutageLog(log, "broker or database")

events_exchange = Exchange(EXCHANGE, type="topic", durable=True)
default_events_queue = Queue(DEFAULT_QUEUE, events_exchange, routing_key="#", durable=True)


class EventPublisher:
    """Publishes event payloads through the Celery app's producer pool.

    On RabbitMQ the events go on connections of their own with publisher confirms: an event
    counts as published (and leaves the outbox) only once the broker has taken it. Without
    them a publish into a broker that is going down succeeded and was lost (the chaos
    suite saw it); payment messages keep the app's pool without confirms (an enqueue must
    not wait on them, and the requeue sweep covers their loss)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._confirming: Any = None  # the confirm-mode connection the pool clones (AMQP)

    def _producer(self) -> Any:
        url = str(self.app.conf.broker_write_url or self.app.conf.broker_url or "")
        if not url.startswith(("amqp", "pyamqp")):
            return self.app.producer_or_acquire()
        if self._confirming is None:
            options = dict(self.app.conf.broker_transport_options or {})
            self._confirming = self.app.connection_for_write(
                transport_options=options | {"confirm_publish": True}
            )
        return producers[self._confirming].acquire(block=True)

    def publish(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Publish (event_type, payload) pairs; raises if the broker refuses."""
        with self._producer() as producer:
            # kombu remembers declarations per connection (and forgets them when it
            # reconnects), but asking it costs ~0.1 ms a publish: one mark of ours in
            # the same memory answers for both entities.
            declared = producer.connection.declared_entities
            if _DECLARED not in declared:
                for entity in (events_exchange, default_events_queue):
                    producer.maybe_declare(entity, retry=True, **_RETRY)
                declared.add(_DECLARED)
            reuse_one_client(producer.channel)
            if len(rows) == 1:  # a transport batch costs more than it saves for one message
                self._publish_one(producer, *rows[0])
                return
            # One transport batch (a Redis pipeline) for the lot; transports without
            # batching publish each message at once. A batched publish only buffers: the
            # network is touched by the batch's one routing lookup and by the flush, and
            # a failure of either fails the whole batch (the sweep publishes it again), so
            # kombu's per-message reconnect-and-retry wrapper is dropped there: a batched
            # event costs 40% less CPU without it.
            retry = not producer.supports_batch_publish
            with producer.batch(), _one_routing_lookup(producer.channel):
                for event_type, payload in rows:
                    self._publish_one(producer, event_type, payload, retry=retry)

    @staticmethod
    def _publish_one(
        producer: Any, event_type: str, payload: dict[str, Any], *, retry: bool = True
    ) -> None:
        producer.publish(
            payload,
            exchange=events_exchange,
            routing_key=routing_key(event_type, payload),
            serializer="json",
            delivery_mode=2,
            headers={"event_id": payload.get("event_id"), "event_type": event_type},
            retry=retry,
            retry_policy=_RETRY,
            timeout=CONFIRM_TIMEOUT_S,  # AMQP: how long to wait for the broker's confirm
        )


def routing_key(event_type: str, payload: dict[str, Any]) -> str:
    """An event's routing key: its type, or with TENDER_EVENT_ROUTING=tenant its tenant's
    word first (``t-a.payment.succeeded``; ``_platform`` for events of no tenant)."""
    if get_settings().event_routing != "tenant":
        return event_type
    return f"{tenant_word(payload.get('tenant_id'))}.{event_type}"


def tenant_word(tenant_id: object) -> str:
    """A tenant as one routing-key word: the characters topic routing treats specially
    (the separator and the wildcards) become ``_``."""
    if not isinstance(tenant_id, str) or not tenant_id:
        return "_platform"
    return tenant_id.replace(".", "_").replace("*", "_").replace("#", "_")


CONFIRM_TIMEOUT_S = 5.0
_RETRY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.2}
_DECLARED = "tender.events: exchange and default queue declared"


@contextmanager
def _one_routing_lookup(channel: Any) -> Iterator[None]:
    """Route a batch with one look at the exchange's bindings.

    kombu's virtual transports (Redis) route in the client: before every message they
    read the exchange's binding table from the broker (a round trip and a new client
    object, most of a publish's cost). Within one batch the table is read once, as if
    the whole batch were published at that instant. AMQP brokers route server-side and
    have no such table; their channels are left alone.
    """
    get_table = getattr(channel, "get_table", None)
    if get_table is None:
        yield
        return
    tables: dict[str, Any] = {}

    def once(exchange: str) -> Any:
        if exchange not in tables:
            tables[exchange] = get_table(exchange)
        return tables[exchange]

    channel.get_table = once  # shadows the method on this channel only
    try:
        yield
    finally:
        del channel.get_table


def publish_now(database: Database, publisher: EventPublisher, outbox_ids: Sequence[int]) -> int:
    """Publish just-committed events by outbox id (webhooks, refunds, reconcile, health);
    on failure they stay for the sweep."""
    if not outbox_ids:
        return 0
    with database.sessions() as session:
        rows = session.execute(
            select(OutboxEvent.event_id, OutboxEvent.event_type, OutboxEvent.payload).where(
                OutboxEvent.id.in_(outbox_ids), OutboxEvent.published_at.is_(None)
            )
        ).all()
    return deliver(
        publisher,
        [(row.event_id, row.event_type, row.payload) for row in rows],
        LedgerWriter(database, batched=False),
    )


def relay_outbox(
    database: Database, publisher: EventPublisher, *, older_than_s: float = 0.0, limit: int = 500
) -> int:
    """Publish unpublished events older than ``older_than_s``, oldest first. Returns the count.

    On PostgreSQL rows are locked with SKIP LOCKED so concurrent relays share the work.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    published = 0
    while True:
        with database.transaction() as session:
            query = (
                select(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None), OutboxEvent.created_at <= cutoff)
                .order_by(OutboxEvent.id)
                .limit(limit)
            )
            if not database.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = list(session.execute(query).scalars())
            if not rows:
                return published
            publisher.publish([(row.event_type, row.payload) for row in rows])
            now = utcnow()
            for row in rows:
                row.published_at = now
            published += len(rows)
        if len(rows) < limit:
            return published


class EventRelay:
    """Publishes just-committed events from a background thread, in batches.

    ``submit`` never blocks the payment: the thread publishes what is queued with one
    producer, then marks those outbox rows published in one statement. A failure
    leaves the rows unpublished for the beat's sweep, so delivery stays at least once.

    It flushes at most once per ``flush_interval_s``: after a quiet spell an event goes
    at once, while events keep coming each flush takes everything that arrived since the
    last one, so an event waits at most that long. Fewer flushes mean fewer wake-ups and
    round trips in this thread, which leaves Celery's consumer thread more of the
    process's GIL; but the wait is most of an event's latency under steady load, so the
    interval is a short 5 ms (bench/README.md has the measurements).

    A caller that finds the relay idle (not publishing, nothing queued, the interval
    past) publishes its events itself, on its own thread: under steady load that is
    most events, and each then costs no hand-off and no wait for this thread to get a
    core. One caller at a time, under the lock the thread takes to publish, so a broker
    outage holds up at most one task thread (for kombu's publish retries) while the rest
    queue; Tender's helper threads (group commit) always queue. For what it gains, with
    the group commit's like change, see :mod:`workers.ledger.group_commit`.
    """

    BATCH = 200
    FLUSH_INTERVAL_S = 0.005

    def __init__(
        self,
        database: Database,
        publisher: EventPublisher,
        writer: LedgerWriter | None = None,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.publisher = publisher
        # The process's group-commit writer: "published" marks ride along with its next batch.
        self.writer = writer or LedgerWriter(database, batched=False)
        self.flush_interval_s = flush_interval_s
        self._queue: queue.SimpleQueue[Sequence[OutboxItem]] = queue.SimpleQueue()
        self._flushing = threading.Lock()  # held by whoever publishes: thread or caller
        self._flushed_at = -math.inf
        self._thread = threading.Thread(
            target=niced(self._run), name="tender-event-relay", daemon=True
        )
        self._thread.start()

    def submit(self, items: Sequence[OutboxItem]) -> None:
        """Publish committed events now if the relay is idle, else queue them for its
        thread (a group commit hands over a whole batch at once)."""
        if not items:
            return
        # Helpers (the group-commit thread) always hand over: they must not wait on the broker.
        if not in_helper_thread() and self._flushing.acquire(blocking=False):
            try:
                now = time.monotonic()
                if self._queue.empty() and now - self._flushed_at >= self.flush_interval_s:
                    self._flushed_at = now
                    deliver(self.publisher, items, self.writer)
                    return
            finally:
                self._flushing.release()
        self._queue.put(items)

    def _run(self) -> None:
        while True:
            batch = list(self._queue.get())
            pause = self._flushed_at + self.flush_interval_s - time.monotonic()
            if pause > 0:  # events keep coming: let this flush take what comes meanwhile
                time.sleep(pause)
            with self._flushing:
                while len(batch) < self.BATCH:
                    try:
                        batch += self._queue.get_nowait()
                    except queue.Empty:
                        break
                self._flushed_at = time.monotonic()
                deliver(self.publisher, batch, self.writer)


def deliver(publisher: EventPublisher, items: Sequence[OutboxItem], writer: LedgerWriter) -> int:
    """Publish outbox items held in memory, then mark them published. Returns the count."""
    if not items:
        return 0
    try:
        publisher.publish([(event_type, payload) for _, event_type, payload in items])
        writer.mark_published([event_id for event_id, _, _ in items])
    except Exception as exc:
        metrics.OUTBOX_PUBLISH_FAILURES.inc()
        _outage.failed(f"{len(items)} event(s) not published; the outbox sweep will retry", exc)
        return 0
    _outage.succeeded()
    return len(items)


class InlineRelay:
    """Publishes in the caller's thread (tests, single-threaded tools): EventRelay's contract."""

    def __init__(self, database: Database, publisher: EventPublisher) -> None:
        self.publisher = publisher
        self.writer = LedgerWriter(database, batched=False)

    def submit(self, items: Sequence[OutboxItem]) -> None:
        deliver(self.publisher, items, self.writer)
