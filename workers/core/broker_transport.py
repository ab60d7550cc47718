"""kombu's Redis and filesystem transports, with the changes Tender needs of them.

Redis: the one change a worker needs to survive a Redis restart.

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

import contextlib
import fcntl
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

import redis.exceptions
from kombu.exceptions import ChannelError
from kombu.transport import filesystem as kombu_filesystem
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

PATH = f"{__name__}:Transport"  # for Celery's broker_transport setting
FILESYSTEM_PATH = f"{__name__}:FilesystemTransport"


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def for_url(broker_url: str) -> str | None:
    """Tender's transport for a Redis or embedded (filesystem) broker URL; None (the
    URL's own) for anything else."""
    if broker_url.startswith(("redis://", "rediss://")):
        return PATH
    if broker_url.startswith("filesystem://"):
        return FILESYSTEM_PATH
    return None


# -- the embedded broker -------------------------------------------------------------


class FilesystemChannel(kombu_filesystem.Channel):
    """kombu's filesystem channel, with every file written whole before anyone can see it.

    kombu 5.7 creates a message under its final name and then writes it (under an
    ``flock`` its readers never take: they take a message by renaming it), so a worker
    could take an empty file and exit on ``JSONDecodeError``; and it rewrites an
    exchange's binding table by truncating it before locking it, so a publisher reading
    the table at that moment failed with "Expecting value" (``tender demo``, 1 run in
    12). Here each file is written under a temporary name the readers skip and renamed
    into place, which is atomic, and is created ``0600``: messages hold payment events.
    A taken message goes to the broker's own processed folder, not the shared temp folder.
    """

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        _write_whole(Path(self.data_folder_out) / name, str_to_bytes(dumps(message)))

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        inbox = Path(self.data_folder_in)
        for name in sorted(os.listdir(inbox)):
            if name.partition(".")[2] != wanted:
                continue  # another queue's message, or a file still being written
            taken = Path(self.processed_folder) / name
            try:
                os.rename(inbox / name, taken)  # the rename is the claim: one taker wins
            except OSError:
                continue
            try:
                payload = taken.read_bytes()
                if not self.store_processed:
                    taken.unlink()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {str(taken)!r} from queue.") from exc
            return loads(bytes_to_str(payload))
        raise Empty()

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        binding = kombu_filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")

        def add(table: list[Any]) -> list[Any] | None:
            return None if binding in table else [binding, *table]

        self._rewrite_table(exchange, add)

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        binding = kombu_filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")

        def remove(table: list[Any]) -> list[Any] | None:
            return [b for b in table if b != binding] if binding in table else None

        self._rewrite_table(exchange, remove)

    def _rewrite_table(
        self, exchange: str, change: Callable[[list[Any]], list[Any] | None]
    ) -> None:
        """Read, change and replace an exchange's binding table, one writer at a time (an
        ``flock`` on a file beside it); readers see the old table or the new, whole."""
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(mode=0o700, exist_ok=True)
        with open(f"{file}.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            table = self.get_table(exchange)
            changed = change(list(table))
            if changed is not None:
                _write_whole(file, str_to_bytes(dumps(changed)))


class FilesystemTransport(kombu_filesystem.Transport):
    Channel = FilesystemChannel


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` (``0600``), then rename it there."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc
