"""Tender's own publishing on a kombu channel: one Redis client per channel.

kombu's Redis channel builds a new ``redis.Redis`` for every command it sends, and
redis-py (5 and later) fills a table of about 170 response callbacks in each: most of the
CPU of a lone publish (a relayed event: 752 -> 265 us here), and part of every
``request_payment``. A client holds no connection of its own (each command borrows one
from the channel's pool), so one per channel serves every thread.

Only channels Tender publishes on get it (the event relay's, the client's enqueue);
Celery's own consumer is left as Celery ships it.
"""

from __future__ import annotations

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
