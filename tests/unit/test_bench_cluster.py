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


class _Clock:
    """``time`` for bench.measure: a perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    import bench.measure

    fake = _Clock()
    monkeypatch.setattr(bench.measure, "time", fake)
    return fake


def test_an_end_to_end_burst_times_the_clients_sends_with_the_workers_running(
    clock: _Clock,
) -> None:
    from bench.measure import Context, flowed

    log: list[str] = []

    def submit() -> float:
        log.append("submit")
        clock.now += 0.2  # the clients' sends: inside the timed window
        return 50.0

    def finished() -> float:
        log.append("finished")
        return clock.now + 0.1  # the last event, 0.1 s after the sends

    result = flowed(Context(None, None, log.append), _Workers(log), 20, submit, finished)  # type: ignore[arg-type]

    assert log == ["resume", "submit", "finished", "pause"]
    assert result["elapsed_s"] == pytest.approx(0.3)  # sends and drain, not the drain alone
    assert result["per_s"] == pytest.approx(20 / 0.3)
    assert result["client_per_s"] == 50.0


def test_an_end_to_end_burst_pauses_the_workers_even_when_it_fails(clock: _Clock) -> None:
    from bench.measure import Context, flowed

    log: list[str] = []

    def finished() -> float:
        raise TimeoutError("no last event")

    with pytest.raises(TimeoutError):
        flowed(Context(None, None, log.append), _Workers(log), 1, lambda: 1.0, finished)  # type: ignore[arg-type]
    assert log[-1] == "pause"


def test_end_to_end_task_bursts_send_while_the_workers_consume_and_wait_for_the_drain_after(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.measure as measure

    log: list[str] = []

    def drained(redis: object, queue: str, timeout_s: float) -> float:
        log.append("drained?")
        return clock.now

    monkeypatch.setattr(measure, "wait_drained", drained)
    workers = _Workers(log)

    def sent(what: str) -> None:
        log.append(what)
        clock.sleep(0.01)

    measure.task_burst(
        measure.Context(None, None, log.append),
        workers,  # type: ignore[arg-type]
        lambda i: sent("send"),
        3,
        timeout_s=5,
        flowing=True,
    )

    # the late acks of the burst before, then the sends with the workers running, and only
    # then the wait for the queue to empty
    assert log == ["drained?", "resume", "send", "send", "send", "drained?", "pause"]


def test_end_to_end_payment_bursts_request_while_the_workers_consume(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.measure as measure
    from bench.events import Arrival

    log: list[str] = []
    monkeypatch.setattr(measure, "wait_drained", lambda *a: clock.now)

    def request(order_id: str) -> None:
        log.append(f"request {order_id}")
        clock.sleep(0.01)

    monkeypatch.setattr(measure, "request", request)

    class Events:
        arrivals = {f"p:{i}": Arrival(f"p:{i}", 100.5, None, "succeeded") for i in range(2)}

        def wait_count(self, phase: str, n: int, timeout_s: float) -> None:
            log.append("events")

    result = measure.payment_burst(
        measure.Context(None, None, log.append),
        _Workers(log),  # type: ignore[arg-type]
        Events(),  # type: ignore[arg-type]
        "p",
        2,
        timeout_s=5,
        flowing=True,
    )

    assert log[0] == "resume" and sorted(log[1:3]) == ["request p:0", "request p:1"]
    assert log[3:] == ["events", "pause"]
    assert result["elapsed_s"] == pytest.approx(0.5)  # first request to the last event
    assert result["not_succeeded"] == 0


def test_the_report_says_when_a_burst_left_the_machine_partly_idle() -> None:
    from bench.report import saturation_notes

    def burst(busy: float) -> dict[str, object]:
        return {"cpu": {"busy_cores": busy, "machine_cores": 2.0}}

    assert saturation_notes({"a": burst(1.95), "c": burst(1.9)}) == []
    notes = saturation_notes({"a": burst(1.95), "c": burst(1.2)})
    assert len(notes) == 1 and notes[0].startswith("note: (c) kept only 1.20 of 2.00 cores")
