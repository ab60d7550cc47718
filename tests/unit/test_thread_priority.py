"""Tender's helper threads yield the CPU to Celery's consumer thread (a higher niceness)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from config.settings import reset_settings
from registry.db import get_database
from workers.core.threads import ProviderLoop
from workers.events.relay import EventRelay
from workers.ledger.group_commit import LedgerWriter

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")


def niceness(thread: threading.Thread | None = None) -> int:
    native_id = thread.native_id if thread is not None else threading.get_native_id()
    assert native_id is not None
    return os.getpriority(os.PRIO_PROCESS, native_id)


async def _noop() -> None:
    return None


def test_the_provider_loop_thread_runs_at_the_configured_niceness(tender_env: Path) -> None:
    before = niceness()
    loop = ProviderLoop()
    try:
        loop.run(_noop(), timeout_s=5)  # the thread is past its start-up
        assert niceness(loop._thread) == max(before, 10)  # the default
        assert niceness() == before  # the caller (the consumer's stand-in) keeps its own
    finally:
        loop.close()


def test_group_commit_and_relay_threads_run_at_the_configured_niceness(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_WORKER_THREAD_NICE", "15")
    reset_settings()
    database = get_database(sqlite_url)
    writer = LedgerWriter(database, batched=True)
    relay = EventRelay(database, publisher=None, writer=writer)  # type: ignore[arg-type]
    expected = max(niceness(), 15)
    for thread in (writer._thread, relay._thread):
        assert thread is not None
        _wait_until(partial(_runs_at, thread, expected))


def _runs_at(thread: threading.Thread, nice: int) -> bool:
    return niceness(thread) == nice


def test_zero_leaves_helper_threads_at_the_process_priority(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_WORKER_THREAD_NICE", "0")
    reset_settings()
    loop = ProviderLoop()
    try:
        loop.run(_noop(), timeout_s=5)
        assert niceness(loop._thread) == niceness()
    finally:
        loop.close()


def _wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the thread never reached the expected niceness"
        time.sleep(0.01)
