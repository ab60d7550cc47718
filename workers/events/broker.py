"""Tender's own publishing on a kombu channel: one Redis client per channel; and how a
broker outage is logged (:class:`OutageLog`).

kombu's Redis channel builds a new ``redis.Redis`` for every command it sends, and
redis-py (5 and later) fills a table of about 170 response callbacks in each: most of the
CPU of a lone publish (a relayed event: 752 -> 265 us here), and part of every
``request_payment``. A client holds no connection of its own (each command borrows one
from the channel's pool), so one per channel serves every thread.

Only channels Tender publishes on get it (the event relay's, the client's enqueue);
Celery's own consumer is left as Celery ships it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


def reuse_one_client(channel: Any) -> None:
    """Make ``channel`` build its Redis client once. AMQP channels (no client factory)
    and channels already done are left alone."""
    create = getattr(channel, "_create_client", None)
    if create is None or getattr(create, "reuses_one_client", False):
        return
    clients: dict[bool, Any] = {}

    def one_client(asynchronous: bool = False) -> Any:
        client = clients.get(asynchronous)
        if client is None:
            client = clients.setdefault(asynchronous, create(asynchronous=asynchronous))
        return client

    one_client.reuses_one_client = True  # type: ignore[attr-defined]
    channel._create_client = one_client  # shadows the method on this channel only


class OutageLog:
    """The expected failures of a dependency (the broker), logged for a person to read:
    one warning line per failure, never a traceback chain, and one line when it answers
    again. ``succeeded`` costs one attribute read while nothing is wrong."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.log = logger
        self.what = what
        self._down_since: float | None = None
        self._failures = 0
        self._lock = threading.Lock()

    def failed(self, message: str, error: BaseException) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._failures += 1
        cause = str(error).strip().splitlines()
        self.log.warning(
            "%s (%s unreachable: %s: %s)",
            message,
            self.what,
            type(error).__name__,
            cause[0][:200] if cause else "",
        )

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            down_s, failures = time.monotonic() - self._down_since, self._failures
            self._down_since, self._failures = None, 0
        self.log.info(
            "%s reachable again after %.1f s (%d failure(s) meanwhile)", self.what, down_s, failures
        )
