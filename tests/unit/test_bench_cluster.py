"""The bench harness: how it starts workers, and how it computes (e)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.cluster import PYTHON
from bench.environment import REPO_ROOT


def test_workers_import_tender_from_pythonpath_not_from_the_working_directory(
    tmp_path: Path,
) -> None:
    other = tmp_path / "other-checkout"
    (other / "workers").mkdir(parents=True)
    (other / "workers" / "__init__.py").write_text("")
    env = os.environ | {"PYTHONPATH": str(other)}

    imported = subprocess.run(
        [*PYTHON, "-c", "import workers; print(workers.__file__)"],
        cwd=REPO_ROOT,  # where bench.cluster starts its workers
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert Path(imported) == other / "workers" / "__init__.py"


def test_added_latency_subtracts_the_providers_own_time_only() -> None:
    from bench.measure import added_ms

    started = {"o1": 10.000, "o2": 10.010}
    arrived = {"o1": 10.025, "o2": 10.340}  # 25 ms and 330 ms after their requests

    assert added_ms(started, arrived, provider_ms=0) == pytest.approx({"o1": 25.0, "o2": 330.0})
    assert added_ms(started, arrived, provider_ms=300) == pytest.approx({"o1": -275.0, "o2": 30.0})


def test_worker_settings_are_tender_settings_only() -> None:
    import argparse

    from bench.run import parse_worker_settings

    parser = argparse.ArgumentParser()
    assert parse_worker_settings(
        parser, ["TENDER_WORKER_REDIS_ACK_EMULATION=false", "TENDER_WORKER_THREAD_NICE=19"]
    ) == {"TENDER_WORKER_REDIS_ACK_EMULATION": "false", "TENDER_WORKER_THREAD_NICE": "19"}
    for bad in ("PYTHONPATH=/elsewhere", "TENDER_X", "TENDER_=1"):
        with pytest.raises(SystemExit):
            parse_worker_settings(parser, [bad])


class _Workers:
    """A stand-in for a WorkerSet: records when it was resumed and paused."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def resume(self, app: object, redis: object, queue: str) -> float:
        self.log.append("resume")
        return 0.0

    def pause(self, app: object, redis: object, queue: str) -> None:
        self.log.append("pause")

    def cpu_s(self) -> float:
        return 0.0


def test_an_end_to_end_burst_times_the_clients_sends_with_the_workers_running() -> None:
    import time

    from bench.measure import Context, flowed

    log: list[str] = []

    def submit() -> float:
        log.append("submit")
        time.sleep(0.2)  # the clients' sends: inside the timed window
        return 50.0

    def finished() -> float:
        log.append("finished")
        return time.perf_counter() + 0.1  # the last event, 0.1 s after the sends

    result = flowed(Context(None, None, log.append), _Workers(log), 20, submit, finished)  # type: ignore[arg-type]

    assert log == ["resume", "submit", "finished", "pause"]
    assert 0.3 <= result["elapsed_s"] < 0.4  # sends and drain, not the drain alone
    assert result["per_s"] == pytest.approx(20 / result["elapsed_s"])
    assert result["client_per_s"] == 50.0
