"""Sweep locks end with their holder (issue 32): a holder killed mid-sweep, or a sweep
whose database session dies under it (what a PostgreSQL restart does), never stops the
next sweep. The table lease these replaced stopped every requeue sweep for 65 s."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from config.settings import get_settings, reset_settings
from registry.db import Database, get_database
from workers.core.locks import hold
from workers.payments.client import _validated, record_payment

HOLDER = """
import sys, time
from registry.db import get_database
from workers.core.locks import hold
with hold(get_database(sys.argv[1]), sys.argv[2]) as held:
    print("held" if held else "refused", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def holder(database_url: str) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(name: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, database_url, name], stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def free_within(database: Database, name: str, deadline_s: float) -> bool:
    """Whether ``name`` can be taken before the deadline (polled, not slept through)."""
    until = time.monotonic() + deadline_s
    while True:
        with hold(database, name) as held:
            if held:
                return True
        if time.monotonic() > until:
            return False
        time.sleep(0.05)


def test_a_held_lock_is_refused_to_everyone_else(database_url: str, holder: Any) -> None:
    holder("reconcile")
    database = get_database(database_url)
    with hold(database, "reconcile") as held:
        assert not held
    with hold(database, "relay_outbox") as other:  # another name is another lock
        assert other


def test_two_threads_of_one_process_exclude_each_other(database_url: str) -> None:
    database = get_database(database_url)
    with hold(database, "relay_outbox") as first:
        assert first
        with hold(database, "relay_outbox") as second:
            assert not second
    with hold(database, "relay_outbox") as again:
        assert again


def test_a_holder_killed_mid_sweep_frees_the_requeue_sweep_within_one_interval(
    database_url: str, holder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.tasks import requeue_lost_task

    monkeypatch.setenv("TENDER_REQUEUE_AFTER_S", "0.05")
    reset_settings()
    fields = _validated("lost-1", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    record_payment(get_database(), fields)  # its message never reached the broker
    time.sleep(0.1)  # older than requeue_after_s
    sweeper = holder("requeue_lost")
    assert requeue_lost_task() == 0  # the holder is mid-sweep: this sweep stands aside
    sweeper.kill()
    sweeper.wait()
    interval_s = get_settings().requeue_interval_s
    assert free_within(get_database(), "requeue_lost", interval_s)
    assert requeue_lost_task() == 1  # the next sweep sends the lost payment again


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_sweep_whose_database_session_dies_leaves_no_lock(database_url: str) -> None:
    database = get_database(database_url)
    with hold(database, "requeue_lost") as held:
        assert held
        terminated = _terminate_holder_session(database, "requeue_lost")
        assert terminated == 1
    # Leaving the block neither raised nor left anything behind: the next sweep runs.
    with hold(database, "requeue_lost") as again:
        assert again


def _terminate_holder_session(database: Database, name: str) -> int:
    """End the PostgreSQL session that holds ``name``, as a database restart would."""
    with database.engine.connect() as connection:
        key = connection.execute(
            text("SELECT hashtextextended('tender:' || current_schema() || ':' || :name, 0)"),
            {"name": name},
        ).scalar_one()
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        pids = connection.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = :high AND objid = :low AND objsubid = 1"
            ),
            {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF},
        ).scalars()
        ended = [
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            for pid in pids
        ]
    return sum(1 for ok in ended if ok)
