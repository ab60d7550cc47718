"""``python -m bench.stages [--rate 250] [--seconds 10] [--bursts 2]``: where (e)'s time goes.

Runs (e)'s paced payments against the bench's workers with a stage probe in each worker
process, then splits every payment's request -> event time into its stages, and shows
the mean of each stage for the fastest half, the next 45%, the next 4% and the slowest
1%. So a tail can be pinned on a stage: waiting in Redis for a worker's consumer, waiting
for a task thread, the claim, the provider call, the finish, or the relay to the event
consumer.

Every timestamp is ``time.perf_counter()`` (``CLOCK_MONOTONIC``, one clock for every
process on the machine). The probe is bench-only: ``bench.tasks`` installs it in a worker
when ``BENCH_STAGES_DIR`` is set, by wrapping three methods and connecting two signals;
Tender's own code has no trace of it. It costs each payment some CPU (a few
microseconds a stamp), so its figures are a little above (e)'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.environment import DEFAULT_BROKER_URL, DEFAULT_POSTGRES_URL, BenchEnv

STAGES_DIR_VARIABLE = "BENCH_STAGES_DIR"

# (label, from stamp, to stamp); the stamps in order along one payment's path
STAGES = (
    ("to a worker's consumer", "requested", "received"),
    ("to a task thread", "received", "started"),
    ("claim", "started", "claimed"),
    ("provider call", "claimed", "charged"),
    ("finish", "charged", "finished"),
    ("relay to the consumer", "finished", "arrived"),
)
BANDS = (
    ("fastest 50%", 0.0, 0.50),
    ("50-95%", 0.50, 0.95),
    ("95-99%", 0.95, 0.99),
    ("slowest 1%", 0.99, 1.0),
)


# -- the analysis ----------------------------------------------------------------------


def read_stamps(directory: Path) -> dict[str, dict[str, float]]:
    """payment id -> stamp -> time; the first of each (a redelivery stamps again)."""
    by_payment: dict[str, dict[str, float]] = {}
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            payment, stamp, at = json.loads(line)
            by_payment.setdefault(payment, {}).setdefault(stamp, at)
    return by_payment


def breakdown(paths: list[dict[str, float]]) -> list[tuple[str, int, float, list[float]]]:
    """Per band (fastest first): label, payments, mean total ms, mean ms of each stage."""
    complete = [p for p in paths if all(s in p for _, a, b in STAGES for s in (a, b))]
    complete.sort(key=lambda p: p["arrived"] - p["requested"])
    rows = []
    for label, low, high in BANDS:
        band = complete[int(len(complete) * low) : int(len(complete) * high)]
        if not band:
            continue
        rows.append(
            (
                label,
                len(band),
                statistics.fmean((p["arrived"] - p["requested"]) * 1000 for p in band),
                [statistics.fmean((p[b] - p[a]) * 1000 for p in band) for _, a, b in STAGES],
            )
        )
    return rows


def render(rows: list[tuple[str, int, float, list[float]]], rate: float, request_ms: float) -> str:
    heads = [label for label, _, _ in STAGES]
    lines = [
        f"(e) at {rate:g}/s, request -> event, mean ms per stage "
        f"(request_payment() itself: p50 {request_ms:.1f} ms, inside the first stage)",
        f"{'band':12} {'n':>5} {'total':>7}  " + "  ".join(f"{h:>{len(h)}}" for h in heads),
    ]
    for label, n, total, stages in rows:
        cells = "  ".join(f"{v:>{len(h)}.1f}" for h, v in zip(heads, stages, strict=True))
        lines.append(f"{label:12} {n:5d} {total:7.1f}  {cells}")
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------


def run(env: BenchEnv, rate: float, seconds: float, bursts: int) -> str:
    import redis
    from sqlalchemy import select

    import bench.tasks  # noqa: F401 - registers the no-op task on Tender's app
    import workers.tasks  # noqa: F401 - registers process_payment
    from bench import measure
    from bench.cluster import WorkerSet
    from bench.events import EventListener
    from bench.run import PROCESSES, TENDER_CONCURRENCY, TENDER_POOL
    from config.celery import PAYMENTS_QUEUE
    from registry.db import get_database
    from registry.service import PluginRegistry
    from workers.core.app import app
    from workers.ledger.records import Payment

    stamp_dir = env.data_dir / "stages"
    stamp_dir.mkdir()
    ctx = measure.Context(app, redis.Redis.from_url(env.broker_url), print)
    PluginRegistry().create_instance(
        "sandbox", {"latency_ms": 0, "charge_book": None}, is_active=True
    )
    listener = EventListener(env.broker_url)
    listener.start()
    worker_set = WorkerSet(
        "stages",
        env.worker_environment() | {STAGES_DIR_VARIABLE: str(stamp_dir)},
        env.data_dir / "logs",
        processes=PROCESSES,
        pool=TENDER_POOL,
        concurrency=TENDER_CONCURRENCY,
    )
    reports = []
    try:
        worker_set.start(app)
        measure.payment_burst(ctx, worker_set, listener, "w", 256, 120)
        for burst in range(bursts):
            phase = f"s{burst}"
            worker_set.resume(app, ctx.redis, PAYMENTS_QUEUE)
            submitted = measure.paced(phase, rate, int(rate * seconds))
            listener.wait_count(phase, len(submitted.started), timeout_s=60)
            worker_set.pause(app, ctx.redis, PAYMENTS_QUEUE)
            time.sleep(1.5)  # the probes' last flush
            with get_database().sessions() as session:
                ids = dict(
                    session.execute(
                        select(Payment.order_id, Payment.id).where(
                            Payment.order_id.like(f"{phase}:%")
                        )
                    ).all()
                )
            stamps = read_stamps(stamp_dir)
            paths = []
            for order_id, at in submitted.started.items():
                path = dict(stamps.get(str(ids.get(order_id)), {}))
                arrival = listener.arrivals.get(order_id)
                if arrival is not None:
                    path |= {"requested": at, "arrived": arrival.at}
                paths.append(path)
            request_ms = statistics.median(submitted.request_ms.values())
            reports.append(render(breakdown(paths), rate, request_ms))
            print(reports[-1] + "\n", flush=True)
    finally:
        worker_set.stop()
        listener.stop()
    return "\n\n".join(reports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--rate", type=float, default=250.0, help="payments per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a burst")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--broker", default=DEFAULT_BROKER_URL)
    args = parser.parse_args(argv)
    env = BenchEnv.create(args.postgres, args.broker)
    try:
        env.apply()
        env.migrate()
        run(env, args.rate, args.seconds, args.bursts)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
