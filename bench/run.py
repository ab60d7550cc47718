"""``python -m bench [--quick]``: every measurement in one run, then the report."""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from bench import measure, report
from bench.cluster import HarnessError, WorkerSet
from bench.environment import DEFAULT_BROKER_URL, DEFAULT_POSTGRES_URL, BenchEnv, machine
from config.settings import WORKER_CONCURRENCY

PROCESSES = 2  # never more worker processes than cores
TENDER_POOL = "threads"
# Threads per worker process: the `tender worker` default (see config.settings). Earlier
# figures: with prefetch 1, 128 threads gave (d) 565/s and 256 gave 593/s; with prefetch 2
# and no niced helpers, 160 gave (d) 664 vs 667/s and (c) 664 vs 709/s against 128.
TENDER_CONCURRENCY = WORKER_CONCURRENCY
SANDBOX_MS = 0  # the sandbox's latency for (c), (e) and (f); (d) sets measure.SLOW_PROVIDER_MS


def _log(started: float) -> Any:
    def log(message: str) -> None:
        print(
            f"[bench {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True
        )

    return log


def run_all(
    env: BenchEnv,
    sizes: measure.Sizes,
    log: Any,
    live: list[WorkerSet],
    concurrency: int,
    latency_rate: float | None = None,
    worker_settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    import redis

    import bench.tasks  # noqa: F401 - registers the baseline tasks on Tender's app
    import workers.tasks  # noqa: F401 - registers process_payment
    from registry.service import PluginRegistry
    from workers.core.app import app

    # As Tender's workers do once ready: start-up objects out of the collector's sight, so
    # a full collection in this process (78 ms seen) does not stall the clocks of (e).
    gc.collect()
    gc.freeze()
    ctx = measure.Context(app, redis.Redis.from_url(env.broker_url), log)
    worker_env = env.worker_environment()
    logs = env.data_dir / "logs"
    results: dict[str, Any] = {"h": {}, "worker_errors": {}}

    def start_workers(
        label: str, settings: dict[str, str] | None = None, **kwargs: Any
    ) -> WorkerSet:
        ws = WorkerSet(label, worker_env | (settings or {}), logs, **kwargs)
        live.append(ws)
        log(f"starting {ws.describe()}")
        ws.start(app)
        return ws

    with start_workers("naive", processes=1, pool="prefork", concurrency=PROCESSES) as w:
        log(f"(b) naive: {sizes.naive_payments} payments at {measure.SLOW_PROVIDER_MS} ms")
        results["b"] = measure.naive(ctx, w, sizes.naive_payments)
        results["h"]["naive"] = w.peak_rss_mb()
        results["worker_errors"]["naive"] = w.errors()
    log(f"(b) {results['b']['per_s']:.2f} payments/s")

    registry = PluginRegistry()
    sandbox = {"latency_ms": SANDBOX_MS, "charge_book": None}
    instances = [
        registry.create_instance("sandbox", sandbox, display_name="Sandbox A", is_active=True),
        registry.create_instance("sandbox", sandbox, display_name="Sandbox B", is_active=False),
    ]
    listener = measure.EventListener(env.broker_url)
    listener.start()
    from config.celery import PAYMENTS_QUEUE

    try:
        with (
            start_workers(
                "tender",
                worker_settings,
                processes=PROCESSES,
                pool=TENDER_POOL,
                concurrency=concurrency,
            ) as w,
            measure.ConnectionSampler() as connections,
        ):
            log(f"warm-up: {sizes.warmup_payments} payments")
            measure.payment_burst(ctx, w, listener, "warm", sizes.warmup_payments, timeout_s=120)
            n = sizes.tender_payments
            # (a) runs on these same workers (the same command line), each of its bursts
            # just before a (c) or (d) burst: the machine's speed drifts by tens of per
            # cent over minutes here, and a ceiling taken minutes apart from (c) would
            # carry that drift into c/a. (a) is the best of all its bursts.
            ceiling_runs = [measure.ceiling(ctx, w, sizes.ceiling_tasks, warm_up=True)]

            def tender_bursts(label: str) -> dict[str, Any]:
                runs = []
                for i in range(sizes.repeats):
                    if i:
                        ceiling_runs.append(measure.ceiling(ctx, w, sizes.ceiling_tasks))
                    runs.append(
                        measure.payment_burst(
                            ctx, w, listener, f"{label}{i}", n, timeout_s=max(120, n / 5)
                        )
                    )
                return measure.best_of(runs)

            log(
                f"(a) and (c) alternating: {sizes.repeats} x {sizes.ceiling_tasks} no-op tasks, "
                f"{sizes.repeats} x {n} payments, sandbox 0 ms"
            )
            results["c"] = tender_bursts("c")
            log(f"(c) {results['c']['per_s']:.1f} payments/s")
            # Not judged: the rate the workers alone drain a full queue at (requested with
            # the workers held, timed from their release), as runs before the twelfth
            # session measured (c).
            results["c_drain"] = measure.payment_burst(
                ctx, w, listener, "drain", n, timeout_s=max(120, n / 5), flowing=False
            )
            log(f"(c) drain rate {results['c_drain']['per_s']:.1f} payments/s (not judged)")

            w.resume(app, ctx.redis, PAYMENTS_QUEUE)
            rate = latency_rate or results["c"]["per_s"] / 2
            log(f"(e) added latency: {sizes.latency_s:g} s at {rate:.0f} payments/s")
            results["e"] = measure.added_latency(
                ctx, listener, rate, sizes.latency_s, provider_ms=SANDBOX_MS
            )
            results["e"]["rate_overridden"] = latency_rate is not None
            log(f"(e) p99 {results['e']['p99_ms']:.1f} ms")

            log(f"(f) hot-swap: {sizes.swaps} swaps")
            results["f"] = measure.hot_swap(
                ctx, listener, registry, instances, sizes.swaps, rate_per_s=min(rate, 100.0)
            )
            w.pause(app, ctx.redis, PAYMENTS_QUEUE)

            for instance in instances:
                registry.update_config(instance.id, {"latency_ms": measure.SLOW_PROVIDER_MS})
            time.sleep(1.0)  # > registry_poll_s: every worker sees the new config
            log(
                f"(a) and (d) alternating: {sizes.repeats} x {n} payments, "
                f"sandbox {measure.SLOW_PROVIDER_MS} ms"
            )
            ceiling_runs.append(measure.ceiling(ctx, w, sizes.ceiling_tasks))
            results["d"] = tender_bursts("d")
            log(f"(d) {results['d']['per_s']:.1f} payments/s")
            results["a"] = measure.best_of(ceiling_runs)
            results["paired"] = measure.paired_ratios(
                [run["per_s"] for run in ceiling_runs],
                results["c"]["all_per_s"],
                results["d"]["all_per_s"],
            )
            log(f"(a) {results['a']['per_s']:.0f} tasks/s (best of {len(ceiling_runs)})")
            results["h"]["tender"] = w.peak_rss_mb()
            results["worker_errors"]["tender"] = w.errors()
        results["pg_peak_connections"] = connections.peak
    finally:
        listener.stop()

    log(f"(g) resolve(): {sizes.resolve_calls} calls")
    results["g"] = measure.resolution(registry, sizes.resolve_calls)
    log(f"(g) with rules: {sizes.resolve_calls} decide() calls, 20 rules, 10 instances")
    results["g_rules"] = measure.rule_resolution(registry, sizes.resolve_calls)
    return results


def parse_worker_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``TENDER_NAME=VALUE`` items as a dict; anything else is a usage error."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("TENDER_") or name == "TENDER_":
            parser.error(f"--worker-setting {item!r} is not TENDER_NAME=VALUE")
        settings[name] = value
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute (CI)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=TENDER_CONCURRENCY,
        help=f"threads per Tender worker process (default {TENDER_CONCURRENCY})",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="payments/s for (e) instead of half of (c)'s rate (the target is judged at half)",
    )
    parser.add_argument(
        "--worker-setting",
        action="append",
        default=[],
        metavar="TENDER_NAME=VALUE",
        help="a setting for Tender's workers only, as (a), (c)-(f) and (h) then run (repeatable); "
        "the report names it",
    )
    parser.add_argument(
        "--costs",
        action="store_true",
        help="count what each operation costs the database and the broker (bench.costs) "
        "instead of the throughput run",
    )
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL, help="server/database URL")
    parser.add_argument(
        "--broker", default=DEFAULT_BROKER_URL, help="a Redis db the bench may flush"
    )
    args = parser.parse_args(argv)
    if args.costs:
        from bench import costs

        return costs.main(["--postgres", args.postgres])
    worker_settings = parse_worker_settings(parser, args.worker_setting)

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: workers stop

    signal.signal(signal.SIGTERM, terminate)
    started = time.perf_counter()
    log = _log(started)
    sizes = measure.QUICK if args.quick else measure.FULL
    live: list[WorkerSet] = []
    try:
        env = BenchEnv.create(args.postgres, args.broker)
    except Exception as exc:
        print(f"bench harness failed: cannot prepare PostgreSQL/Redis: {exc!r}", file=sys.stderr)
        return 2
    try:
        env.apply()
        env.migrate()
        info = machine(env)
        log(f"schema {env.schema}, broker {env.broker_url}, data {env.data_dir}")
        log(f"machine: {info['cores']} cores, Python {info['python']}, {info['versions']}")
        # Each worker process holds at most a connection per thread, and its pool's limit.
        from config.settings import get_settings

        settings = get_settings()
        pool = getattr(settings, "db_pool_size", 10) + getattr(settings, "db_max_overflow", 40)
        needed = PROCESSES * min(pool, args.concurrency + 2) + 10
        free = info["postgresql_max_connections"] - info["postgresql_connections_in_use_at_start"]
        if free < needed:
            log(f"warning: PostgreSQL has {free} free connections; the workers may need {needed}")
        results = run_all(
            env, sizes, log, live, args.concurrency, args.latency_rate, worker_settings
        )
    except (Exception, KeyboardInterrupt) as exc:
        for ws in live:
            ws.stop()
        print(f"\nbench harness failed: {exc!r}", file=sys.stderr)
        if not isinstance(exc, HarnessError | KeyboardInterrupt):
            traceback.print_exc()
        for ws in live:
            for line, count in sorted(ws.errors().items(), key=lambda kv: -kv[1])[:10]:
                print(f"{ws.label} worker error x{count}: {line}", file=sys.stderr)
            print(ws.log_tails(), file=sys.stderr)
        return 2
    finally:
        for ws in live:
            ws.stop()
        env.close()

    results["setup"] = {
        "mode": "quick" if args.quick else "full",
        "sizes": sizes.__dict__,
        "worker_processes": PROCESSES,
        "tender_pool": TENDER_POOL,
        "tender_concurrency": args.concurrency,
        "tender_worker_settings": worker_settings,
        "naive_pool": f"prefork x{PROCESSES}",
        "broker": args.broker,
        "database": "PostgreSQL, fresh schema",
        "sandbox": "charge_book None (in memory)",
        "method": (
            "throughput (best of its bursts), end to end: with the workers consuming, "
            f"{measure.SUBMIT_THREADS} client threads send the burst (apply_async for a "
            "and b, request_payment for c and d); time from the first send to the last "
            "ack (a, b) or last relayed event (c, d); (a) runs on Tender's workers, a "
            "burst just before each (c) and (d) burst; (c) drain rate, not judged: "
            "requested with the workers held, timed from their release; latency: paced "
            "submission at half of (c), request_payment() start to event arrival minus "
            "the sandbox's configured latency"
        ),
    }
    checks = report.verdicts(results)
    document = {
        "finished_at": datetime.now(UTC).isoformat(),
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": info,
        "results": results,
        "targets": checks,
    }
    path = report.write(document)
    print(report.table(results, checks))
    if worker_settings:
        shown = ", ".join(f"{k}={v}" for k, v in worker_settings.items())
        print(f"\nTender's workers ran with {shown} (not the defaults)")
    print(
        f"\n{info['cores']} cores, Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; {document['duration_s']} s; written to {path}"
    )
    return 0
