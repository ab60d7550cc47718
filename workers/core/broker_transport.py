"""kombu's Redis transport, with the one change a worker needs to survive a Redis restart.

When Redis goes away, Celery's consumer closes its connection and then its channel; by
then the channel's transport has let go of its client, and kombu, putting the worker's
unacknowledged messages back on the way out, builds a connection pool from that missing
client: ``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery treats
that as unrecoverable and the worker exits (kombu 5.7, seen in ``python -m bench.chaos``,
every run, every worker). Here the same moment raises the connection error it is, which
Celery's consumer ignores while closing; it then reconnects as it does for any broker
outage. The messages it could not put back were in a Redis that lost them anyway, and the
ledger's requeue sweep sends their payments again.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis

PATH = f"{__name__}:Transport"  # for Celery's broker_transport setting


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def for_url(broker_url: str) -> str | None:
    """This transport for a Redis broker URL; None (the URL's own) for anything else."""
    return PATH if broker_url.startswith(("redis://", "rediss://")) else None
