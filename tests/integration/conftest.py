"""Integration fixtures: the real PostgreSQL and Redis, and a real Celery worker.

The worker is Celery's classic embedded test worker (``celery_session_worker``
from ``celery.contrib.pytest``, no Docker) running Tender's own app on Redis,
with the ledger on a fresh PostgreSQL schema. Under CI a missing service fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.signals import task_postrun

from config.settings import reset_settings
from registry.db import forget_databases
from registry.migrate import upgrade
from tests.conftest import REDIS_URL, drop_postgres_schema, fresh_postgres_schema, service_missing

# Redis databases of one integration session: base (the embedded worker), base + 1 (crash
# tests), base + 2 (the demo). Two sessions at once need TENDER_TEST_REDIS_DB apart by 3.
INTEGRATION_REDIS_DB = int(os.environ.get("TENDER_TEST_REDIS_DB", "3"))


def redis_db_url(offset: int = 0) -> str:
    return REDIS_URL.rsplit("/", 1)[0] + f"/{INTEGRATION_REDIS_DB + offset}"


pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def integration_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for the whole integration session: PostgreSQL schema + Redis db."""
    broker = redis_db_url()
    try:
        client = redis.Redis.from_url(broker)
        client.ping()
        client.flushdb()
    except Exception as exc:
        service_missing("Redis at 127.0.0.1:6379", exc)
    database = fresh_postgres_schema()
    data_dir = tmp_path_factory.mktemp("tender-data")
    env = {
        "TENDER_ENV": "test",
        "TENDER_DATA_DIR": str(data_dir),
        "TENDER_DATABASE_URL": database,
        "TENDER_BROKER_URL": broker,
        "TENDER_PAYMENT_LEASE_S": "4",
        "TENDER_PROVIDER_TIMEOUT_S": "5",
        "TENDER_REGISTRY_POLL_S": "0.1",
        # the session's real workers claim cores among themselves, not from a bench
        "TENDER_WORKER_CPU_LOCK_DIR": str(data_dir / "cpus"),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    _reset_process()
    upgrade(database)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reset_process()
    drop_postgres_schema(database)


def _reset_process() -> None:
    from workers.core.app import reconfigure

    use_new_database()
    reconfigure()


def use_new_database() -> None:
    """Re-read the settings and drop this process's database objects, but keep the Celery
    app's broker connections: reconfiguring the app while the session's embedded worker
    runs left that worker consuming nothing (its messages stayed unprocessed)."""
    from workers import runtime

    reset_settings()
    forget_databases()
    runtime.reset()


@pytest.fixture(scope="session")
def celery_session_app(integration_env: dict[str, str]) -> Any:
    from workers.core.app import app

    return app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    return {
        "queues": ("payments", "maintenance"),
        "concurrency": 8,
        "perform_ping_check": False,
        "shutdown_timeout": 30,
    }


@pytest.fixture
def worker(celery_session_worker: Any, integration_env: dict[str, str]) -> Any:
    """The running embedded worker (one per session)."""
    return celery_session_worker


@pytest.fixture
def tenant() -> str:
    """A tenant of its own per test, so routes never cross between tests."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def book_path(tmp_path: Path) -> str:
    """A sandbox charge book file shared by the test and the worker processes."""
    return str(tmp_path / "charges.db")


def wait_for(predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@contextlib.contextmanager
def finished_tasks() -> Iterator[set[str]]:
    """The ids of tasks the session's embedded worker (a thread of this process) has run
    to an end: succeeded or failed, not merely retried. Lets a test wait for duplicate
    deliveries to finish instead of sleeping."""
    done: set[str] = set()

    def record(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        if task_id is not None and state != "RETRY":
            done.add(task_id)

    task_postrun.connect(record, weak=False)
    try:
        yield done
    finally:
        task_postrun.disconnect(record)


class WorkerProcess:
    """A real ``celery worker`` OS process (prefork unless told), for crash tests."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        queues: str = "payments,maintenance",
    ) -> None:
        self.hostname = f"crash-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        # A file, not a pipe: nobody reads a pipe while the test runs, and a worker
        # whose pipe fills (64 KiB of INFO lines) blocks on its next log line.
        self.log = tempfile.NamedTemporaryFile(prefix="tender-worker-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.core.app",
                "worker",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--queues",
                queues,
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
                "--hostname",
                self.hostname,
            ],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self) -> str:
        """Stop the worker; its output."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = Path(self.log.name).read_text(errors="replace")
        self.log.close()
        return output


class EventTap:
    """A private queue bound to ``tender.events``: what a billing consumer would see."""

    def __init__(self, broker_url: str, binding: str = "#") -> None:
        from kombu import Connection, Queue

        from workers.events.relay import events_exchange

        self.connection = Connection(broker_url)
        self.queue = Queue(
            f"test-tap-{uuid.uuid4().hex[:8]}",
            events_exchange,
            routing_key=binding,
            auto_delete=False,
        )
        self.queue(self.connection.default_channel).declare()
        self.simple = self.connection.SimpleQueue(self.queue)
        self.seen: list[dict[str, Any]] = []

    def collect(self, predicate: Any, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Read events until ``predicate(seen)`` holds; return them all."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"events not seen in {timeout_s} s; got {[e['type'] for e in self.seen]}"
                )
            try:
                message = self.simple.get(block=True, timeout=min(remaining, 0.5))
            except self.simple.Empty:
                continue
            self.seen.append(message.payload)
            message.ack()
        return self.seen

    def close(self) -> None:
        self.simple.close()
        with self.connection.channel() as channel:
            self.queue(channel).delete()
        self.connection.release()


@pytest.fixture
def events(integration_env: dict[str, str]) -> Iterator[EventTap]:
    tap = EventTap(integration_env["TENDER_BROKER_URL"])
    yield tap
    tap.close()
