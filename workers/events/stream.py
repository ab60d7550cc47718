"""Reading result events: a private queue bound to ``tender.events`` (what ``events tail`` uses).

Billing services consume the same way: bind a durable queue of their own to the
topic exchange ``tender.events`` with the routing keys they care about
(``payment.*``), and dedupe on ``event_id`` (delivery is at least once).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from kombu import Queue

from workers.events.relay import events_exchange


class EventTail:
    """A temporary queue bound to the events exchange; iterate to read events."""

    def __init__(self, binding: str = "#") -> None:
        from workers.core.app import app

        self.connection = app.connection_for_read()
        self.queue = Queue(
            f"tender.tail.{uuid.uuid4().hex[:10]}",
            events_exchange,
            routing_key=binding,
            durable=False,
            auto_delete=False,
        )
        channel = self.connection.default_channel
        events_exchange(channel).declare()
        self.queue(channel).declare()
        self.simple = self.connection.SimpleQueue(self.queue)

    def read(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event, or None if none came within ``timeout_s``."""
        try:
            message = self.simple.get(block=True, timeout=timeout_s)
        except self.simple.Empty:
            return None
        message.ack()
        payload: dict[str, Any] = message.payload
        return payload

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.simple.close()
        with contextlib.suppress(Exception), self.connection.channel() as channel:
            self.queue(channel).delete()
        self.connection.release()


def tail(binding: str = "#", idle_timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
    """Yield events as they arrive; stop after ``idle_timeout_s`` without one (None: never)."""
    stream = EventTail(binding)
    try:
        while True:
            event = stream.read(timeout_s=idle_timeout_s or 1.0)
            if event is None:
                if idle_timeout_s is not None:
                    return
                continue
            yield event
    finally:
        stream.close()
