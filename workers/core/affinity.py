"""One core per worker process: a worker's threads share one interpreter lock, so keep
them on one CPU.

A threads-pool worker is one Python process: Celery's consumer thread, up to
``--concurrency`` task threads and Tender's helpers (provider loop, group commit,
event relay), all taking turns at the interpreter lock. When the scheduler spreads those
threads over several cores, every hand-off of the lock is a wake-up on another core
that then waits to be scheduled, while the thread that let go spins on; on one core the
hand-off is an ordinary context switch. Pinning each worker process to a core of its own
(``TENDER_WORKER_CPU=auto``, the default) raised the bench's Tender payments per second
by 80% and the no-op ceiling by 26% on a 2-core machine (see the README's Performance).

``auto`` claims the first core of the process's allowed set that no other Tender worker
on the machine holds: each core has a lock file (``tender-cpu-N.lock``) in the lock
folder, held with ``flock`` for the life of the process, so a killed worker's core is
free again at once. A worker that finds every core taken runs unpinned. Prefork workers
are never pinned here: their children would all inherit the parent's single core.

Workers can only see each other's claims through a shared lock folder. Containers each
have a ``/tmp`` of their own, so in a container ``auto`` pins only when
``TENDER_WORKER_CPU_LOCK_DIR`` is set (a volume the worker containers share); otherwise
every replica would claim the same first core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_held: list[IO[bytes]] = []  # the claimed core's lock file, open for the process's life


class CpuUnavailable(ValueError):
    """The configured core is not one this process may run on."""


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "tender-cpus"


def in_container() -> bool:
    """Docker, Podman or Kubernetes: a ``/tmp`` that other workers do not see."""
    markers = (Path("/.dockerenv"), Path("/run/.containerenv"))
    return any(m.exists() for m in markers) or "KUBERNETES_SERVICE_HOST" in os.environ


def runs_tasks_in_process(pool: object) -> bool:
    """Whether a Celery pool runs its tasks on this process's threads (threads, solo)."""
    from celery.concurrency.solo import TaskPool as SoloPool
    from celery.concurrency.thread import TaskPool as ThreadPool

    return isinstance(pool, ThreadPool | SoloPool)


def allowed_cpus() -> list[int]:
    """The cores this process may run on (a container's cpuset, ``taskset``), in order."""
    return sorted(os.sched_getaffinity(0))


def claim_free_cpu(cpus: list[int], lock_dir: Path) -> tuple[int, IO[bytes]] | None:
    """The first of ``cpus`` whose lock file nobody holds, with the open, locked file
    (closing it frees the core); None if every one is held."""
    import fcntl  # POSIX only; callers check the platform first

    lock_dir.mkdir(parents=True, exist_ok=True)
    for cpu in cpus:
        handle = (lock_dir / f"tender-cpu-{cpu}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return cpu, handle
    return None


def pin_process(cpus: set[int]) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cpus``.

    On Linux affinity belongs to a thread, and a new thread takes its creator's, so every
    thread that exists is moved, again until a pass finds no thread it has not moved (one
    may start another while the pass runs).
    """
    moved: set[str] = set()
    while fresh := set(os.listdir("/proc/self/task")) - moved:
        for task in fresh:
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(task), cpus)
        moved |= fresh


def choose_cpu(setting: str, lock_dir: Path | None) -> int | None:
    """The core to pin this process to under ``setting`` (``auto``, ``off`` or a number),
    or None to leave it unpinned. ``auto`` claims a core through ``lock_dir`` (None: the
    default folder, outside a container) and keeps the claim until the process exits."""
    if setting == "off":
        return None
    cpus = allowed_cpus()
    if setting != "auto":
        cpu = int(setting)
        if cpu not in cpus:
            raise CpuUnavailable(
                f"TENDER_WORKER_CPU={cpu}, but this process may only run on CPUs {cpus}"
            )
        return cpu
    if len(cpus) < 2:
        return None  # nothing to choose between: pinning changes nothing
    if lock_dir is None:
        if in_container():
            log.warning(
                "TENDER_WORKER_CPU=auto in a container without TENDER_WORKER_CPU_LOCK_DIR: "
                "running unpinned (set it to a folder the worker containers share)"
            )
            return None
        lock_dir = default_lock_dir()
    claimed = claim_free_cpu(cpus, lock_dir)
    if claimed is None:
        log.warning(
            "every CPU (%s) already has a Tender worker pinned to it; this one runs unpinned",
            cpus,
        )
        return None
    cpu, handle = claimed
    _held.append(handle)
    return cpu


def pin_worker(pool: object, setting: str, lock_dir: Path | None) -> int | None:
    """Pin a started worker process to one core when its Celery ``pool`` runs tasks in
    this process; returns the core, or None when it stays unpinned."""
    if sys.platform != "linux" or not runs_tasks_in_process(pool):
        return None
    try:
        cpu = choose_cpu(setting, lock_dir)
    except CpuUnavailable as exc:
        log.error("%s; running unpinned", exc)
        return None
    if cpu is None:
        return None
    allowed = set(allowed_cpus())  # before the pass: it may move this thread, then fail
    try:
        pin_process({cpu})
    except OSError as exc:  # a cpuset changed under us: leave every thread where it may run
        log.error("could not pin the worker to CPU %d (%s); running unpinned", cpu, exc)
        pin_process(allowed)
        release()
        return None
    log.info("worker process %d runs on CPU %d (TENDER_WORKER_CPU=%s)", os.getpid(), cpu, setting)
    return cpu


def release() -> None:
    """Give back this process's claimed core (its lock file)."""
    while _held:
        _held.pop().close()
