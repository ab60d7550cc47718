"""Threads a worker process runs beside Celery's: the provider event loop and the helpers.

Celery tasks are synchronous; the provider contract is async. Rather than an
``asyncio.run`` per payment (a new loop each time, no shared connection pools),
each worker process keeps one event loop in a daemon thread. Task threads submit
plugin coroutines to it and wait, so many payments can wait on slow providers at
once in a single process, sharing each SDK's connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def niced(target: Callable[[], object]) -> Callable[[], None]:
    """``target`` as a helper thread's body that first marks the thread as a helper (see
    :func:`in_helper_thread`) and lowers its CPU priority to ``worker_thread_nice``.

    A worker process is one consumer thread (Celery's: it fetches each message, records
    it as unacked and acks it, a Redis round trip each) feeding task threads, which hand
    work to Tender's helper threads (provider loop, group commit, event relay). On a busy
    machine they all queue for the same cores: in the bench's (c) bursts the consumer
    waited 0.9 ms per message for a core, against 0.2 ms in the no-op ceiling, and no
    payment starts sooner than the consumer hands it over. The helpers run at a higher
    niceness, so the consumer (and the task threads, and the database and broker on the
    same host) run first when they are ready. Paired bench runs: (c) +7%, the no-op
    ceiling unchanged (niced task threads as well cost the ceiling 7%, so they are not).
    """

    def run() -> None:
        _helper.active = True
        _lower_own_priority()
        target()

    return run


_helper = threading.local()


def in_helper_thread() -> bool:
    """Whether this thread is one of Tender's helpers (its body was wrapped by niced)."""
    return getattr(_helper, "active", False)


def _lower_own_priority() -> None:
    """Linux only: a thread's niceness is its own there (elsewhere the call would name a
    process)."""
    if sys.platform != "linux":
        return
    from config.settings import get_settings

    nice = get_settings().worker_thread_nice
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):  # not permitted, or gone: run at the priority it has
        if os.getpriority(os.PRIO_PROCESS, thread) < nice:
            os.setpriority(os.PRIO_PROCESS, thread, nice)


class CallTimeout(Exception):
    """A provider call exceeded its time budget (the request may have been sent)."""


class ProviderLoop:
    """An asyncio loop running in its own daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=niced(self._loop.run_forever), name="tender-providers", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coroutine`` on the loop; CallTimeout after ``timeout_s``."""

        async def bounded() -> T:
            try:
                # asyncio.timeout, not wait_for: no second task per call (90 -> 82 us)
                async with asyncio.timeout(timeout_s):
                    return await coroutine
            except TimeoutError:
                raise CallTimeout(f"provider call exceeded {timeout_s:g} s") from None

        return asyncio.run_coroutine_threadsafe(bounded(), self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
