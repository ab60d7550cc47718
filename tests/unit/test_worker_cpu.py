"""One core per worker process (workers.core.affinity), without pinning the test process.

Pinning itself is checked on real worker processes in tests/integration/test_worker_cpu.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.thread import TaskPool as ThreadPool

from config.settings import SettingsError, load_settings
from workers.core import affinity


class _TenderThreads(ThreadPool):
    """A subclass of Celery's threads pool is still a threads pool."""


def _threads() -> object:
    return _TenderThreads(limit=1)


def test_auto_gives_each_worker_a_core_of_its_own(tmp_path: Path) -> None:
    first = affinity.claim_free_cpu([0, 1], tmp_path)
    second = affinity.claim_free_cpu([0, 1], tmp_path)
    assert first is not None and second is not None
    assert (first[0], second[0]) == (0, 1)
    assert affinity.claim_free_cpu([0, 1], tmp_path) is None  # every core is taken
    first[1].close()  # that worker stopped: its core is free again
    again = affinity.claim_free_cpu([0, 1], tmp_path)
    assert again is not None and again[0] == 0
    for _, handle in (second, again):
        handle.close()


def test_a_killed_workers_core_is_free_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from workers.core.affinity import "
            "claim_free_cpu; c = claim_free_cpu([0, 1], Path(sys.argv[1])); "
            "print(c[0], flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        taken = affinity.claim_free_cpu([0, 1], tmp_path)
        assert taken is not None and taken[0] == 1
        taken[1].close()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    claimed = affinity.claim_free_cpu([0], tmp_path)
    while claimed is None and time.monotonic() < deadline:
        time.sleep(0.05)
        claimed = affinity.claim_free_cpu([0], tmp_path)
    assert claimed is not None and claimed[0] == 0
    claimed[1].close()


def test_a_named_core_must_be_one_the_process_may_use(tmp_path: Path) -> None:
    allowed = affinity.allowed_cpus()
    assert affinity.choose_cpu(str(allowed[-1]), tmp_path) == allowed[-1]
    with pytest.raises(affinity.CpuUnavailable, match="may only run on CPUs"):
        affinity.choose_cpu(str(max(allowed) + 1000), tmp_path)


def test_off_leaves_the_worker_to_the_scheduler(tmp_path: Path) -> None:
    assert affinity.choose_cpu("off", tmp_path) is None
    assert not list(tmp_path.iterdir())  # claimed nothing


@pytest.mark.parametrize("pool", [PreforkPool(limit=1), object(), None])
def test_only_in_process_pools_are_pinned(pool: object, tmp_path: Path) -> None:
    """A prefork parent's children would all inherit its one core."""
    before = os.sched_getaffinity(0)
    assert affinity.pin_worker(pool, "auto", tmp_path) is None
    assert os.sched_getaffinity(0) == before
    assert not list(tmp_path.iterdir())


def test_a_named_core_the_process_cannot_use_runs_unpinned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = os.sched_getaffinity(0)
    assert affinity.pin_worker(_threads(), str(max(before) + 1000), tmp_path) is None
    assert os.sched_getaffinity(0) == before
    assert "may only run on CPUs" in caplog.text


two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="auto pins only with two cores to choose from"
)


@two_cores
def test_in_a_container_auto_needs_a_shared_lock_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each container has a /tmp of its own: every replica would claim the same core."""
    monkeypatch.setattr(affinity, "in_container", lambda: True)
    monkeypatch.setattr(affinity, "default_lock_dir", lambda: tmp_path)
    assert affinity.choose_cpu("auto", None) is None
    assert "TENDER_WORKER_CPU_LOCK_DIR" in caplog.text
    assert not list(tmp_path.iterdir())
    cpu = affinity.choose_cpu("auto", tmp_path / "shared")  # a folder they share: pinned
    assert cpu == affinity.allowed_cpus()[0]
    affinity.release()


@two_cores
def test_outside_a_container_auto_uses_the_temp_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(affinity, "in_container", lambda: False)
    monkeypatch.setattr(affinity, "default_lock_dir", lambda: tmp_path)
    assert affinity.choose_cpu("auto", None) == affinity.allowed_cpus()[0]
    assert [p.name for p in tmp_path.iterdir()] == [f"tender-cpu-{affinity.allowed_cpus()[0]}.lock"]
    affinity.release()


@two_cores
def test_a_pin_that_fails_leaves_every_thread_where_it_was_and_frees_the_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pass moves this (the main) thread, then fails on another: every thread goes
    back to all the cores it had, not to the one this thread was just moved to."""
    real = os.sched_setaffinity
    allowed = set(affinity.allowed_cpus())
    main = threading.get_native_id()
    moves: list[int] = []

    def move_main_then_refuse(tid: int, cpus: set[int]) -> None:
        if set(cpus) != allowed:
            moves.append(tid)
            if len(moves) > 1:
                raise OSError(22, "Invalid argument")
            real(main, cpus)  # this thread is moved first, for real
        real(tid, cpus)

    other = threading.Event()
    helper = threading.Thread(target=other.wait, daemon=True)  # a second thread to fail on
    helper.start()
    monkeypatch.setattr(os, "sched_setaffinity", move_main_then_refuse)
    try:
        assert affinity.pin_worker(_threads(), "auto", tmp_path) is None
        assert len(moves) == 2  # one move made, one refused
        for task in os.listdir("/proc/self/task"):
            assert os.sched_getaffinity(int(task)) == allowed
        assert "could not pin" in caplog.text
        freed = affinity.claim_free_cpu([min(allowed)], tmp_path)
        assert freed is not None  # the claim was given back
        freed[1].close()
    finally:
        monkeypatch.undo()
        os.sched_setaffinity(0, allowed)
        other.set()
        helper.join()


@pytest.mark.parametrize("value", ["auto", "off", "0", "7", " AUTO "])
def test_worker_cpu_setting_accepts_auto_off_or_a_core(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_WORKER_CPU", value)
    assert load_settings().worker_cpu == value.strip().lower()


def test_a_blank_lock_folder_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENDER_WORKER_CPU_LOCK_DIR", " ")
    assert load_settings().worker_cpu_lock_dir is None


@pytest.mark.parametrize("value", ["fast", "-1", "1.5", ""])
def test_worker_cpu_setting_refuses_anything_else(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_WORKER_CPU", value)
    with pytest.raises(SettingsError, match="TENDER_WORKER_CPU: expected 'auto', 'off' or a CPU"):
        load_settings()
