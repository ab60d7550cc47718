"""``python -m bench.compare VARIANT [VARIANT ...]``: worker settings side by side.

This machine's speed drifts by tens of per cent within minutes, so two ``python -m bench``
runs cannot tell a 5% change from the drift. This tool starts the workers once per variant
and round, alternating variants round by round, and pairs every payment burst with a no-op
burst on the same workers just before it (both end to end, as ``python -m bench`` times
them). It reports each variant's payment rate and its paired ratio to the no-op rate (c/a,
or d/a with ``--provider-ms 300``). With ``--paced RATE`` it runs (e) instead: payments at a
steady RATE for ``--seconds`` per burst, and reports each variant's added latency (p50,
p95, p99 of every burst).

A variant is a comma-separated list of ``NAME=VALUE`` worker settings (environment
variables, such as ``TENDER_WORKER_PREFETCH_MULTIPLIER=1``) and ``concurrency=N``;
``default`` is the worker as ``python -m bench`` runs it. Example::

    python -m bench.compare default TENDER_WORKER_PREFETCH_MULTIPLIER=1 --provider-ms 300
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import Any

from bench import measure
from bench.cluster import WorkerSet
from bench.environment import DEFAULT_BROKER_URL, DEFAULT_POSTGRES_URL, BenchEnv
from bench.run import PROCESSES, TENDER_CONCURRENCY, TENDER_POOL


def parse_variant(text: str) -> tuple[int, dict[str, str]]:
    """``concurrency=N,NAME=VALUE,...`` (or ``default``) as (threads, environment)."""
    concurrency, env = TENDER_CONCURRENCY, {}
    for item in filter(None, text.split(",")):
        if item == "default":
            continue
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"bench.compare: {item!r} is not NAME=VALUE")
        if name == "concurrency":
            concurrency = int(value)
        else:
            env[name] = value
    return concurrency, env


def compare(
    env: BenchEnv,
    variants: list[str],
    rounds: int,
    bursts: int,
    n: int,
    provider_ms: int,
    paced_rate: float | None = None,
    paced_s: float = 10.0,
) -> dict[str, list[Any]]:
    """Each variant's bursts: (no-op/s, payments/s) pairs, or (e) results when paced."""
    import redis

    import bench.tasks  # noqa: F401 - registers the no-op task on Tender's app
    import workers.tasks  # noqa: F401 - registers process_payment
    from config.celery import PAYMENTS_QUEUE
    from registry.service import PluginRegistry
    from workers.core.app import app

    gc.collect()
    gc.freeze()
    ctx = measure.Context(app, redis.Redis.from_url(env.broker_url), _log)
    PluginRegistry().create_instance(
        "sandbox",
        {"latency_ms": provider_ms, "charge_book": None},
        display_name="Sandbox",
        is_active=True,
    )
    listener = measure.EventListener(env.broker_url)
    listener.start()
    pairs: dict[str, list[Any]] = {v: [] for v in variants}
    phase = 0
    try:
        for round_ in range(rounds):
            for variant in variants:
                concurrency, settings = parse_variant(variant)
                worker_env = env.worker_environment() | settings
                worker_set = WorkerSet(
                    "compare",
                    worker_env,
                    env.data_dir / "logs",
                    processes=PROCESSES,
                    pool=TENDER_POOL,
                    concurrency=concurrency,
                )
                worker_set.start(app)
                try:
                    measure.payment_burst(ctx, worker_set, listener, f"w{phase}", 256, 120)
                    for burst in range(bursts):
                        phase += 1
                        if paced_rate is not None:
                            worker_set.resume(app, ctx.redis, PAYMENTS_QUEUE)
                            e = measure.added_latency(
                                ctx,
                                listener,
                                paced_rate,
                                paced_s,
                                phase=f"e{phase}",
                                provider_ms=provider_ms,
                            )
                            worker_set.pause(app, ctx.redis, PAYMENTS_QUEUE)
                            pairs[variant].append(e)
                            _log(
                                f"round {round_ + 1}, {variant}: p50 {e['p50_ms']:.1f} / "
                                f"p95 {e['p95_ms']:.1f} / p99 {e['p99_ms']:.1f} ms"
                            )
                            continue
                        a = measure.ceiling(ctx, worker_set, 10_000, warm_up=burst == 0)["per_s"]
                        c = measure.payment_burst(
                            ctx, worker_set, listener, f"p{phase}", n, timeout_s=max(120, n / 5)
                        )["per_s"]
                        pairs[variant].append((a, c))
                        _log(f"round {round_ + 1}, {variant}: {c:.0f}/s, a {a:.0f}/s, {c / a:.3f}")
                finally:
                    worker_set.stop()
    finally:
        listener.stop()
    return pairs


def _log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report_paced(runs_by_variant: dict[str, list[dict[str, Any]]], rate: float) -> str:
    lines = [f"added latency at {rate:g}/s: median of the bursts' p50 / p95 / p99, worst p99"]
    for variant, runs in runs_by_variant.items():
        medians = " ".join(
            f"{statistics.median(run[key] for run in runs):6.1f}"
            for key in ("p50_ms", "p95_ms", "p99_ms")
        )
        worst = max(run["p99_ms"] for run in runs)
        lines.append(f"{variant[:44]:44} {medians}  worst {worst:6.1f} ms, {len(runs)} bursts")
    return "\n".join(lines)


def report(pairs: dict[str, list[tuple[float, float]]], provider_ms: int) -> str:
    ratio = "d/a" if provider_ms else "c/a"
    lines = [f"{'variant':44} {'payments/s':>10} {'no-op/s':>8}  {ratio} mean (min-max)"]
    for variant, runs in pairs.items():
        ratios = [c / a for a, c in runs]
        lines.append(
            f"{variant[:44]:44} {statistics.fmean(c for _, c in runs):10.0f} "
            f"{statistics.fmean(a for a, _ in runs):8.0f}  {statistics.fmean(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}), {len(runs)} bursts"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("variants", nargs="+", help="`default` or NAME=VALUE[,NAME=VALUE]")
    parser.add_argument("--rounds", type=int, default=3, help="worker starts per variant")
    parser.add_argument("--bursts", type=int, default=2, help="payment bursts per start")
    parser.add_argument("--payments", type=int, default=1500, help="payments per burst")
    parser.add_argument("--provider-ms", type=int, default=0, help="sandbox latency (0 or 300)")
    parser.add_argument(
        "--paced", type=float, metavar="RATE", help="measure (e) at RATE payments/s instead"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a paced burst")
    args = parser.parse_args(argv)
    for variant in args.variants:
        parse_variant(variant)  # a typo fails before anything starts
    env = BenchEnv.create(DEFAULT_POSTGRES_URL, DEFAULT_BROKER_URL)
    try:
        env.apply()
        env.migrate()
        pairs: dict[str, Any] = compare(
            env,
            args.variants,
            args.rounds,
            args.bursts,
            args.payments,
            args.provider_ms,
            args.paced,
            args.seconds,
        )
    finally:
        env.close()
    print(report_paced(pairs, args.paced) if args.paced else report(pairs, args.provider_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
