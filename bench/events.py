"""A consumer of ``tender.events``: when each payment's result event arrived.

It consumes the durable ``tender.events.all`` queue (bound ``#`` to the topic
exchange), as a billing service would, and timestamps each event on arrival with
the harness's clock (``time.perf_counter``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.cluster import HarnessError


@dataclass(frozen=True)
class Arrival:
    order_id: str
    at: float  # perf_counter
    instance_id: str | None
    status: str | None


class EventListener:
    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.arrivals: dict[str, Arrival] = {}
        self.timeline: list[Arrival] = []  # in arrival order
        self._counts: dict[str, int] = defaultdict(int)  # by order_id prefix ("c:", ...)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-events", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise HarnessError(f"event consumer did not start: {self._error!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from kombu import Connection

        from workers.relay import default_events_queue

        try:
            with Connection(self.broker_url) as connection:
                queue = default_events_queue(connection.default_channel)
                queue.declare()
                with connection.Consumer(
                    [queue], callbacks=[self._on_event], accept=["json"], no_ack=True
                ):
                    self._ready.set()
                    while not self._stop.is_set():
                        try:
                            connection.drain_events(timeout=0.2)
                        except TimeoutError:
                            continue
        except BaseException as exc:  # reported to waiters
            self._error = exc
            self._ready.set()
            with self._changed:
                self._changed.notify_all()

    def _on_event(self, body: dict[str, Any], _message: Any) -> None:
        now = time.perf_counter()
        order_id = str(body.get("order_id"))
        arrival = Arrival(order_id, now, body.get("instance_id"), body.get("status"))
        with self._changed:
            if order_id not in self.arrivals:  # at least once: keep the first
                self.arrivals[order_id] = arrival
                self.timeline.append(arrival)
                self._counts[order_id.split(":", 1)[0]] += 1
            self._changed.notify_all()

    def count(self, phase: str) -> int:
        with self._changed:
            return self._counts[phase]

    def wait_count(self, phase: str, n: int, timeout_s: float, stall_s: float = 30.0) -> None:
        """Until ``n`` events of ``phase`` arrived. HarnessError after ``timeout_s``, or
        after ``stall_s`` without a new event (payments are being lost, not slow)."""
        deadline = time.monotonic() + timeout_s
        seen, progressed = -1, time.monotonic()
        with self._changed:
            while self._counts[phase] < n:
                self._raise_if_broken()
                now = time.monotonic()
                if self._counts[phase] != seen:
                    seen, progressed = self._counts[phase], now
                if now > deadline or now - progressed > stall_s:
                    waited = f"{timeout_s:g} s" if now > deadline else f"{stall_s:g} s without one"
                    raise HarnessError(
                        f"phase {phase}: {self._counts[phase]} of {n} events after {waited}"
                        " (see the worker logs below)"
                    )
                self._changed.wait(min(deadline - now, 0.5))

    def wait_for_instance(self, instance_id: str, after: float, timeout_s: float) -> float | None:
        """Arrival time of the first event served by ``instance_id`` after ``after``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                self._raise_if_broken()
                for arrival in self.timeline[seen:]:
                    if arrival.at > after and arrival.instance_id == instance_id:
                        return arrival.at
                seen = len(self.timeline)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.5))

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise HarnessError(f"event consumer failed: {self._error!r}")
