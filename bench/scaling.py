"""``python -m bench.scaling [--processes 1,2,4,8] [--latency-ms 300,1500]``: throughput as
worker processes are added (issue 40).

For each provider latency (the sandbox's) and each number of Tender worker processes
(threads pool, ``--threads`` each) over one Redis and one PostgreSQL: a burst of payments
end to end (payments per second, from the first ``request_payment`` to the last relayed
event), then payments paced at 80% of that rate for ``--seconds`` (p95 from
``request_payment`` to the relayed event, the provider's latency included), and
PostgreSQL's share of the machine's CPU during both (its processes' CPU time from /proc
over wall time times cores). Every process shares this machine's cores: the report says
how many.

Each worker process holds a small database pool (``TENDER_DB_POOL_SIZE=6``, overflow 2)
so that eight of them stay under PostgreSQL's 100 connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import measure
from bench.cluster import WorkerSet
from bench.environment import DEFAULT_BROKER_URL, DEFAULT_POSTGRES_URL, BenchEnv, machine


def postgres_cpu_s() -> float:
    """CPU seconds used so far by every process named ``postgres`` on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name != "postgres":
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def run(
    env: BenchEnv,
    processes: list[int],
    latencies_ms: list[int],
    threads: int,
    burst: int,
    seconds: float,
    log: Any,
) -> list[dict[str, Any]]:
    import redis

    import bench.tasks  # noqa: F401 - registers the baseline tasks on Tender's app
    import workers.tasks  # noqa: F401 - registers process_payment
    from config.celery import PAYMENTS_QUEUE
    from registry.service import PluginRegistry
    from workers.core.app import app

    ctx = measure.Context(app, redis.Redis.from_url(env.broker_url), log)
    worker_env = env.worker_environment() | {
        "TENDER_DB_POOL_SIZE": "6",
        "TENDER_DB_MAX_OVERFLOW": "2",
    }
    registry = PluginRegistry()
    sandbox = registry.create_instance(
        "sandbox", {"latency_ms": latencies_ms[0], "charge_book": None}, is_active=True
    )
    listener = measure.EventListener(env.broker_url)
    listener.start()
    cores = os.cpu_count() or 1
    rows = []
    try:
        for latency in latencies_ms:
            registry.update_config(sandbox.id, {"latency_ms": latency})
            time.sleep(1.0)  # every process sees the new latency
            for count in processes:
                label = f"s{latency}x{count}"
                worker_set = WorkerSet(
                    label, worker_env, env.data_dir / "logs", processes=count,
                    pool="threads", concurrency=threads,
                )  # fmt: skip
                log(f"{count} process(es) x {threads} threads, provider {latency} ms")
                worker_set.start(app)
                try:
                    measure.payment_burst(
                        ctx, worker_set, listener, f"{label}w", 100, timeout_s=120
                    )
                    cpu0, wall0 = postgres_cpu_s(), time.perf_counter()
                    flow = measure.payment_burst(
                        ctx, worker_set, listener, f"{label}b", burst, timeout_s=300
                    )
                    worker_set.resume(app, ctx.redis, PAYMENTS_QUEUE)
                    paced = measure.added_latency(
                        ctx, listener, 0.8 * flow["per_s"], seconds, phase=f"{label}p"
                    )
                    busy = (postgres_cpu_s() - cpu0) / ((time.perf_counter() - wall0) * cores)
                finally:
                    worker_set.stop()
                rows.append(
                    {
                        "latency_ms": latency,
                        "processes": count,
                        "threads": threads,
                        "per_s": flow["per_s"],
                        "paced_per_s": paced["rate_per_s"],
                        "p95_ms": paced["p95_ms"],
                        "postgres_cpu_share": busy,
                        "not_succeeded": flow["not_succeeded"],
                    }
                )
                log(
                    f"  {flow['per_s']:.0f} payments/s; paced at {paced['rate_per_s']:.0f}/s: "
                    f"p95 {paced['p95_ms']:.0f} ms; PostgreSQL {busy:.0%} of the CPU"
                )
    finally:
        listener.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--latency-ms", default="300,1500")
    parser.add_argument("--threads", type=int, default=64, help="threads per worker process")
    parser.add_argument("--burst", type=int, default=1500, help="payments per burst")
    parser.add_argument("--seconds", type=float, default=8.0, help="paced phase length")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--broker", default=DEFAULT_BROKER_URL)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[scaling {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr)

    env = BenchEnv.create(args.postgres, args.broker)
    try:
        env.apply()
        env.migrate()
        info = machine(env)
        rows = run(
            env,
            [int(p) for p in args.processes.split(",")],
            [int(ms) for ms in args.latency_ms.split(",")],
            args.threads,
            args.burst,
            args.seconds,
            log,
        )
    finally:
        env.close()
    print(
        f"{info['cores']} cores; {args.threads} threads per worker process; one Redis, one PostgreSQL"
    )
    print(
        "| provider | processes | payments/s (burst) | p95 ms (paced at 80%) | PostgreSQL CPU share |"
    )
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['latency_ms']} ms | {row['processes']} | {row['per_s']:.0f} | "
            f"{row['p95_ms']:.0f} (at {row['paced_per_s']:.0f}/s) | "
            f"{row['postgres_cpu_share']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
