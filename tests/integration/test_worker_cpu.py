"""Real worker processes each keep all their threads on a core of their own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.integration.conftest import WorkerProcess, redis_db_url, wait_for

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell pinned from not"
)


def cores_of(pid: int) -> set[str]:
    """The Cpus_allowed_list of every thread of ``pid``."""
    found = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


def one_core(pid: int) -> str | None:
    """The core every thread of ``pid`` is pinned to, if they all are on the same one."""
    cores = cores_of(pid)
    only = next(iter(cores)) if len(cores) == 1 else ""
    return only if only.isdigit() else None


def answered_ping(broker: str, worker: WorkerProcess) -> bool:
    probe = Celery("cpu-probe", broker=broker, set_as_current=False)
    try:
        return bool(probe.control.ping(destination=[worker.hostname], timeout=0.5))
    finally:
        probe.close()


def test_each_threads_worker_runs_on_a_core_of_its_own(
    integration_env: dict[str, str], tmp_path: Path
) -> None:
    # a broker of their own: the session's embedded worker must not take the task below
    broker = redis_db_url(1)
    redis.Redis.from_url(broker).flushdb()
    env = integration_env | {
        "TENDER_WORKER_CPU_LOCK_DIR": str(tmp_path),
        "TENDER_BROKER_URL": broker,
    }
    workers = [WorkerProcess(env, concurrency=4, pool="threads") for _ in range(2)]
    try:
        pinned = [wait_for(lambda w=w: one_core(w.process.pid), 30) for w in workers]
        assert pinned[0] != pinned[1]  # each worker on a core of its own

        # a task makes its worker's pool start a thread: it runs on that worker's core too
        def threads() -> int:
            return sum(len(list(Path(f"/proc/{w.process.pid}/task").iterdir())) for w in workers)

        def ran() -> bool:  # the pool ran the task: a thread of its own, or one it had started
            return any(
                "relay_outbox" in line and "succeeded" in line
                for w in workers
                for line in Path(w.log.name).read_text(errors="replace").splitlines()
            )

        threads_before = threads()
        sender = Celery("cpu-probe", broker=env["TENDER_BROKER_URL"], set_as_current=False)
        sender.send_task("tender.relay_outbox", queue="maintenance")
        sender.close()
        # A worker still booting when the count was taken may have started its pool's
        # thread already: the task's run, not a rise in the count, is what to wait for.
        wait_for(lambda: threads() > threads_before or ran(), 30)
        assert [one_core(w.process.pid) for w in workers] == pinned
        locks = {p.name for p in tmp_path.iterdir()}
        assert {f"tender-cpu-{core}.lock" for core in pinned} <= locks
    finally:
        for w in workers:
            w.stop()


def test_a_prefork_worker_is_left_to_the_scheduler(
    integration_env: dict[str, str], tmp_path: Path
) -> None:
    """Its children would all inherit one core."""
    env = integration_env | {"TENDER_WORKER_CPU_LOCK_DIR": str(tmp_path)}
    worker = WorkerProcess(env, concurrency=2, pool="prefork")
    try:
        wait_for(lambda: answered_ping(integration_env["TENDER_BROKER_URL"], worker), 30)
        time.sleep(0.5)  # worker_ready comes with the consumer, about when pings do
        everywhere = {
            line.split(":", 1)[1].strip()
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list:")
        }
        for pid in [worker.process.pid, *worker.children()]:
            assert cores_of(pid) == everywhere
        assert not list(tmp_path.iterdir())
    finally:
        worker.stop()
