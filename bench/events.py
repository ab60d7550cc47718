"""A consumer of ``tender.events``: when each payment's result event arrived.

It consumes the durable ``tender.events.all`` queue (bound ``#`` to the topic
exchange), as a billing service would, and timestamps each event on arrival with
``time.perf_counter`` (``CLOCK_MONOTONIC``: one clock for every process on the machine).

The consumer runs in a process of its own (``python -m bench.events BROKER_URL``), as
billing's would. In the harness's process its thread queued for the GIL behind the
paced submitter's threads, and that wait was timed as Tender's: events reached Redis
and were stamped up to tens of milliseconds later. Arrivals come back on its stdout in
batches, stamped already.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import IO, Any

from bench.environment import HarnessError

# How long the consumer holds stamped arrivals before it sends them on, at most.
SEND_EVERY_S = 0.01


@dataclass(frozen=True)
class Arrival:
    order_id: str
    at: float  # perf_counter
    instance_id: str | None
    status: str | None


def consume(broker_url: str, out: IO[str]) -> None:
    """The consumer process: stamp each event as it arrives, write batches to ``out`` as
    JSON lines (``"ready"`` first), until SIGTERM."""
    from kombu import Connection

    from workers.events.relay import default_events_queue

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    pending: list[tuple[str, float, str | None, str | None]] = []

    def on_event(body: dict[str, Any], _message: Any) -> None:
        now = time.perf_counter()
        pending.append(
            (str(body.get("order_id")), now, body.get("instance_id"), body.get("status"))
        )

    def send(message: Any) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        with Connection(broker_url) as connection:
            queue = default_events_queue(connection.default_channel)
            queue.declare()
            with connection.Consumer([queue], callbacks=[on_event], accept=["json"], no_ack=True):
                send("ready")
                sent = time.monotonic()
                while not stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=SEND_EVERY_S)
                    if pending and time.monotonic() - sent >= SEND_EVERY_S:
                        send(pending)
                        pending, sent = [], time.monotonic()
                if pending:
                    send(pending)
    except BaseException as exc:  # reported to waiters
        send({"error": repr(exc)})


class EventListener:
    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.arrivals: dict[str, Arrival] = {}
        self.timeline: list[Arrival] = []  # in arrival order
        self._counts: dict[str, int] = defaultdict(int)  # by order_id prefix ("c:", ...)
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._stopping = False
        self._error: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._receive, name="bench-events", daemon=True)

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.events", self.broker_url],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            self.stop()
            raise HarnessError(f"event consumer did not start: {self._error}")

    def stop(self) -> None:
        self._stopping = True
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._thread.join(timeout=5)

    def _receive(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            if message == "ready":
                self._ready.set()
            elif isinstance(message, dict):
                self._fail(message["error"])
                return
            else:
                self._record(message)
        self._fail("the event consumer process exited")

    def _record(self, arrivals: list[list[Any]]) -> None:
        with self._changed:
            for order_id, at, instance_id, status in arrivals:
                if order_id not in self.arrivals:  # at least once: keep the first
                    arrival = Arrival(order_id, at, instance_id, status)
                    self.arrivals[order_id] = arrival
                    self.timeline.append(arrival)
                    self._counts[order_id.split(":", 1)[0]] += 1
            self._changed.notify_all()

    def _fail(self, error: str) -> None:
        with self._changed:
            if not self._stopping:
                self._error = error
            self._ready.set()
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
            raise HarnessError(f"event consumer failed: {self._error}")


if __name__ == "__main__":
    consume(sys.argv[1], sys.stdout)
