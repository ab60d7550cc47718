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
