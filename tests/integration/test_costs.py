"""What a payment costs the database and the broker may not rise unnoticed (issue 40): the
counts of ``python -m bench.costs`` against the figures recorded in bench/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.costs import METRICS, recorded

ROOT = Path(__file__).resolve().parents[2]


def test_a_payment_costs_no_more_than_the_recorded_figures() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.costs", "--json", "-n", "8",
         "--broker", "redis://127.0.0.1:6379/6"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout)
    measured.pop("through a worker")  # counted at the Redis server: other tests' traffic shows
    figures = recorded((ROOT / "bench" / "README.md").read_text())
    assert set(figures) == set(measured), "bench/README.md records every operation"
    risen = []
    for operation, counts in measured.items():
        if not operation.startswith("payment"):
            continue
        for metric in METRICS:
            # counts are means over the runs: a pool ping can add a fraction; bytes carry
            # ids and timestamps whose length varies by a few characters
            slack = figures[operation][metric] * 0.02 if metric == "broker bytes" else 0.5
            if counts[metric] > figures[operation][metric] + slack:
                risen.append(
                    f"{operation}: {metric} {counts[metric]} > {figures[operation][metric]}"
                )
    assert not risen, "a payment costs more than bench/README.md records: " + "; ".join(risen)
