"""EventPublisher and EventRelay on kombu's in-memory transport: routing by event type,
one binding lookup per batch, and "published" marks through the ledger writer."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Queue
from kombu.transport import memory
from sqlalchemy import select

from providers.base import utcnow
from registry.db import get_database
from workers.core.threads import niced
from workers.events.relay import EventPublisher, EventRelay, events_exchange
from workers.ledger.group_commit import LedgerWriter
from workers.ledger.outbox import OutboxEvent, outbox_table


def payload(event_type: str) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "type": event_type}


@pytest.fixture
def app() -> Celery:
    # kombu's memory transport keeps one broker per process whatever the URL: forget the
    # queues, messages and bindings earlier tests left, or a queue here holds their events.
    memory.Channel.queues.clear()
    memory.Transport.global_state.clear()
    broker = f"memory://{uuid.uuid4().hex}"
    return Celery("relay-test", broker=broker)


def drain(app: Celery, queue: Queue) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    with Connection(app.conf.broker_url) as connection, connection.SimpleQueue(queue) as simple:
        while True:
            try:
                message = simple.get(timeout=0.05)
            except simple.Empty:
                return got
            message.ack()
            got.append(message.payload)


def test_a_batch_reads_the_exchange_bindings_once_and_routes_every_event(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed_only = Queue("failed-only", events_exchange, routing_key="payment.failed")
    with Connection(app.conf.broker_url) as connection:
        failed_only.declare(channel=connection.default_channel)
    lookups: list[str] = []
    original = memory.Channel.get_table

    def counting(self: Any, exchange: str) -> Any:
        lookups.append(exchange)
        return original(self, exchange)

    monkeypatch.setattr(memory.Channel, "get_table", counting)
    rows = [
        ("payment.succeeded", payload("payment.succeeded")),
        ("payment.failed", payload("payment.failed")),
        ("payment.succeeded", payload("payment.succeeded")),
    ]
    EventPublisher(app).publish(rows)

    assert lookups == ["tender.events"]  # kombu alone would look once per message
    assert [p["type"] for p in drain(app, failed_only)] == ["payment.failed"]
    everything = Queue("tender.events.all", events_exchange, routing_key="#", durable=True)
    assert [p["event_id"] for p in drain(app, everything)] == [p["event_id"] for _, p in rows]
    # The lookup is cached for that batch only: the next one reads the bindings again.
    EventPublisher(app).publish(rows[:2])
    assert lookups == ["tender.events", "tender.events"]


def test_a_queue_bound_between_batches_receives_the_next_batch(app: Celery) -> None:
    publisher = EventPublisher(app)
    publisher.publish([("payment.failed", payload("payment.failed"))] * 2)
    late = Queue("late", events_exchange, routing_key="payment.*")
    with Connection(app.conf.broker_url) as connection:
        late.declare(channel=connection.default_channel)
    second = [("payment.failed", payload("payment.failed")) for _ in range(2)]
    publisher.publish(second)
    assert [p["event_id"] for p in drain(app, late)] == [p["event_id"] for _, p in second]


def test_relay_marks_published_through_the_group_commit_writer(
    app: Celery, sqlite_url: str
) -> None:
    database = get_database()
    writer = LedgerWriter(database, batched=True)
    event_id = uuid.uuid4()
    with database.begin() as connection:
        connection.execute(
            outbox_table.insert(),
            {
                "event_id": event_id,
                "event_type": "payment.succeeded",
                "payload": payload("payment.succeeded"),
                "created_at": utcnow(),
            },
        )
    relay = EventRelay(database, EventPublisher(app), writer)
    relay.submit([(event_id, "payment.succeeded", payload("payment.succeeded"))])

    def published() -> bool:
        with database.sessions() as session:
            row = session.execute(
                select(OutboxEvent.published_at).where(OutboxEvent.event_id == event_id)
            ).scalar_one()
        return row is not None

    deadline = time.monotonic() + 5
    while not published() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert published()


def test_declarations_are_made_again_after_a_reconnect(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu forgets declarations when it reconnects (the broker may have lost them);
    so must the publisher, or events would be routed to no queue."""
    from kombu import Producer

    declared: list[str] = []
    original = Producer.maybe_declare

    def counting(self: Any, entity: Any, *args: Any, **kwargs: Any) -> Any:
        declared.append(entity.name)
        return original(self, entity, *args, **kwargs)

    monkeypatch.setattr(Producer, "maybe_declare", counting)
    publisher = EventPublisher(app)
    publisher.publish([("payment.failed", payload("payment.failed"))])
    publisher.publish([("payment.failed", payload("payment.failed"))])
    assert declared == ["tender.events", "tender.events.all"]  # once per connection

    with app.pool.acquire() as connection:
        connection.declared_entities.clear()  # what kombu does on reconnect
    publisher.publish([("payment.failed", payload("payment.failed"))])
    assert declared == ["tender.events", "tender.events.all"] * 2


class RecordingPublisher(EventPublisher):
    """Records each publish call's events (and its thread) instead of sending them."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.threads: list[int] = []

    def publish(self, rows: Any) -> None:
        self.threads.append(threading.get_ident())
        self.calls.append([event_type for event_type, _ in rows])


class NoMarks:
    def mark_published(self, event_ids: Any) -> None:
        pass


def wait_calls(publisher: RecordingPublisher, n: int, timeout_s: float = 5.0) -> float:
    started = time.monotonic()
    while len(publisher.calls) < n:
        assert time.monotonic() - started < timeout_s, publisher.calls
        time.sleep(0.002)
    return time.monotonic() - started


def test_the_relay_publishes_a_lone_event_at_once_and_a_stream_in_one_flush_per_interval() -> None:
    publisher = RecordingPublisher()
    relay = EventRelay(None, publisher, NoMarks(), flush_interval_s=3.0)  # type: ignore[arg-type]
    # after a quiet spell, an event goes at once (not after the interval)
    relay.submit([(uuid.uuid4(), "first", {})])
    assert wait_calls(publisher, 1) < 2.5
    # events that keep coming wait out the interval and go together
    relay.submit([(uuid.uuid4(), "second", {})])
    time.sleep(0.1)  # long enough for a relay without an interval to publish it alone
    relay.submit([(uuid.uuid4(), "third", {})])
    wait_calls(publisher, 2)
    time.sleep(0.1)
    assert publisher.calls == [["first"], ["second", "third"]]


def test_an_idle_relay_publishes_on_the_submitting_thread_and_a_busy_one_on_its_own() -> None:
    publisher = RecordingPublisher()
    relay = EventRelay(None, publisher, NoMarks(), flush_interval_s=1.0)  # type: ignore[arg-type]
    relay.submit([(uuid.uuid4(), "first", {})])
    # published before submit returned, by the caller: no hand-off to the relay thread
    assert publisher.calls == [["first"]]
    assert publisher.threads == [threading.get_ident()]
    relay.submit([(uuid.uuid4(), "second", {})])  # within the interval: the thread's job
    assert publisher.calls == [["first"]]
    wait_calls(publisher, 2)
    assert publisher.calls == [["first"], ["second"]]
    assert publisher.threads[1] == relay._thread.ident


def test_a_helper_thread_always_hands_its_events_to_the_relay_thread() -> None:
    """The group-commit thread must never wait on the broker, even when the relay is idle."""
    publisher = RecordingPublisher()
    relay = EventRelay(None, publisher, NoMarks(), flush_interval_s=0.0)  # type: ignore[arg-type]
    helper = threading.Thread(target=niced(lambda: relay.submit([(uuid.uuid4(), "e", {})])))
    helper.start()
    helper.join(5)
    wait_calls(publisher, 1)
    assert publisher.threads == [relay._thread.ident]


def test_routing_keys_by_type_or_by_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    """TENDER_EVENT_ROUTING=tenant puts the tenant first, as one routing word (issue 36);
    the default keeps the type alone, what billing binds today."""
    from config.settings import reset_settings
    from workers.events.relay import routing_key

    reset_settings()
    assert routing_key("payment.succeeded", {"tenant_id": "t-a"}) == "payment.succeeded"
    monkeypatch.setenv("TENDER_EVENT_ROUTING", "tenant")
    reset_settings()
    try:
        assert routing_key("payment.succeeded", {"tenant_id": "t-a"}) == "t-a.payment.succeeded"
        assert routing_key("alert.raised", {"tenant_id": None}) == "_platform.alert.raised"
        assert (
            routing_key("payment.failed", {"tenant_id": "acme.eu#*"}) == "acme_eu__.payment.failed"
        )
    finally:
        reset_settings()
