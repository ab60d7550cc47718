"""Celery workers as subprocesses: start, hold, release, measure memory, stop.

Workers start consuming only an idle queue, so the harness can fill ``payments``
first and then release every worker at one instant (:meth:`WorkerSet.resume`).
Kombu's Redis transport re-reads its queue list only when a ``BRPOP`` returns (it
blocks up to 1 s), so after adding or cancelling a consumer the harness unblocks
the bench database's ``BRPOP`` clients with ``CLIENT UNBLOCK``: the change then
takes effect within milliseconds instead of up to a second, on every worker alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.environment import REPO_ROOT, HarnessError

IDLE_QUEUE = "bench.idle"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# -P: the working directory (the repository) does not go first on sys.path, so the
# workers import Tender from PYTHONPATH, which a bench.compare variant may point at
# another checkout. Without it every variant ran this checkout's code.
PYTHON = (sys.executable, "-P")
# Same flags for every phase; gossip, mingle and heartbeats add broker chatter that a
# payment worker does not need.
COMMON_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class WorkerSet:
    """``processes`` Celery worker processes with one pool model."""

    def __init__(
        self,
        label: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        processes: int = 2,
        pool: str = "threads",
        concurrency: int = 64,
    ) -> None:
        self.label = label
        self.env = env
        self.log_dir = log_dir
        self.pool = pool
        self.concurrency = concurrency
        run = uuid.uuid4().hex[:6]
        self.hostnames = [f"{label}{i}-{run}@bench" for i in range(processes)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def command(self, hostname: str) -> list[str]:
        return [
            *PYTHON,
            "-m",
            "celery",
            "-A",
            "workers.core.app",
            "worker",
            "--pool",
            self.pool,
            "--concurrency",
            str(self.concurrency),
            "--queues",
            IDLE_QUEUE,
            "--include",
            "bench.tasks",
            "--hostname",
            hostname,
            "--loglevel",
            "WARNING",
            *COMMON_FLAGS,
        ]

    def describe(self) -> str:
        return (
            f"{len(self.hostnames)} x `celery -A workers.core.app worker --pool {self.pool} "
            f"--concurrency {self.concurrency} {' '.join(COMMON_FLAGS)}`"
        )

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> WorkerSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, app: Any, timeout_s: float = 60.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for hostname in self.hostnames:
            log_path = self.log_dir / f"{hostname.split('@')[0]}.log"
            with log_path.open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        self.command(hostname),
                        cwd=REPO_ROOT,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a Ctrl-C at the terminal reaches us only
                    )
                )
            self.logs.append(log_path)
        deadline = time.monotonic() + timeout_s
        waiting = set(self.hostnames)
        while waiting:
            self._check_alive()
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"workers {sorted(waiting)} did not answer ping in {timeout_s} s"
                )
            for reply in app.control.ping(destination=sorted(waiting), timeout=0.5) or []:
                waiting -= set(reply)

    def _check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise HarnessError(f"worker exited with {proc.returncode}; log tail:\n{tail(log)}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Warm shutdown (SIGTERM) of our own processes; SIGKILL what is left."""
        family = {proc.pid: self.process_ids_of(proc.pid) for proc in self.procs}
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                for pid in family[proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs = []

    # -- holding and releasing ----------------------------------------------------

    def resume(self, app: Any, redis: Any, queue: str) -> float:
        """Start consuming ``queue`` on every worker; returns the instant it took effect."""
        self._control(app.control.add_consumer, queue)
        time.sleep(0.05)  # the reply precedes the consumer change by one hub iteration
        started = time.perf_counter()
        unblock_brpop(redis)
        return started

    def pause(self, app: Any, redis: Any, queue: str) -> None:
        self._control(app.control.cancel_consumer, queue)
        time.sleep(0.05)
        unblock_brpop(redis)
        time.sleep(0.05)

    def _control(self, command: Any, queue: str) -> None:
        self._check_alive()
        replies = command(queue, destination=self.hostnames, reply=True, timeout=5) or []
        answered = {name for reply in replies for name in reply}
        if answered != set(self.hostnames):
            raise HarnessError(f"{command.__name__}({queue}): no reply from some workers")

    # -- memory ----------------------------------------------------------------------

    @staticmethod
    def process_ids_of(pid: int) -> list[int]:
        """``pid`` and its descendants (prefork children)."""
        found = [pid]
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.extend(WorkerSet.process_ids_of(int(child)))
        return found

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM (peak resident set) of every worker process, by ``role:pid``."""
        peaks: dict[str, float] = {}
        for proc in self.procs:
            for pid in self.process_ids_of(proc.pid):
                role = "main" if pid == proc.pid else "child"
                kb = _status_kb(pid, "VmHWM")
                if kb is not None:
                    peaks[f"{role}:{pid}"] = round(kb / 1024, 1)
        return peaks

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by every worker process."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for proc in self.procs:
            for pid in self.process_ids_of(proc.pid):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def log_tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{tail(log)}" for log in self.logs)

    def errors(self) -> dict[str, int]:
        """Distinct error lines in the worker logs (exceptions and ERROR records), counted."""
        found: dict[str, int] = {}
        for log in self.logs:
            try:
                text = log.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if "ERROR/" in line or line.startswith(("sqlalchemy.exc.", "psycopg.")):
                    key = _UUID.sub("<id>", line.split("] ", 1)[-1])[:200]
                    found[key] = found.get(key, 0) + 1
        return found


class CpuMeter:
    """Where the machine's CPU went during a burst, in cores (1.0 = one core busy).

    ``rest_cores`` is everything that is neither a worker nor this harness: PostgreSQL,
    Redis and the event consumer (about half a core in an end-to-end payment burst), and
    anything else running on the machine.
    """

    def __init__(self, workers: WorkerSet) -> None:
        self.workers = workers
        self._start: tuple[float, float, float, float, float] | None = None

    @staticmethod
    def _machine() -> tuple[float, float]:
        """(all jiffies, idle jiffies) over every CPU, in seconds."""
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        return sum(fields[:8]) / tick, (fields[3] + fields[4]) / tick

    def _snapshot(self) -> tuple[float, float, float, float, float]:
        total, idle = self._machine()
        return time.perf_counter(), total, idle, self.workers.cpu_s(), time.process_time()

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        assert self._start is not None
        end = self._snapshot()
        wall, total, idle, workers, harness = (b - a for a, b in zip(self._start, end, strict=True))
        cores = total / wall if wall > 0 else 0.0
        busy = (total - idle) / wall if wall > 0 else 0.0
        return {
            "machine_cores": round(cores, 2),
            "busy_cores": round(busy, 2),
            "worker_cores": round(workers / wall, 2),
            "harness_cores": round(harness / wall, 2),
            "rest_cores": round(max(busy - (workers + harness) / wall, 0.0), 2),
        }


def unblock_brpop(redis: Any) -> None:
    """Make every client blocked in BRPOP on the bench's Redis database re-issue it."""
    db = int(redis.connection_pool.connection_kwargs.get("db", 0))
    for client in redis.client_list():
        if client.get("cmd") == "brpop" and int(client.get("db", -1)) == db:
            redis.client_unblock(int(client["id"]))


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
