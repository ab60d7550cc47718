"""``python -m bench.routing [--payments 20000] [--seeds 5] [--plot PATH]``: success-rate
routing (issue 38) against the oracle and a fixed split, in simulation.

Three sandbox instances approve 92%, 85% and 70% of payments; halfway through, the best
and the worst swap places. Each payment is routed by Tender's own code
(``registry.routing.decide`` with a success-rate rule and ``registry.adaptive``), its
outcome drawn from its instance's rate and counted in a sliding window of the last
``--window`` payments (the production window is time: ``TENDER_ROUTING_WINDOW_S``, 900 s,
about 1,000 payments at a little over one a second). Reported over ``--seeds`` runs:

* the realised approval rate against the oracle (always the best instance) and a fixed
  1/3 split (the same outcome draws for all three);
* how many payments after the swap until 80% of a rolling 100 go to the new best;
* what the exploration floor costs: the same runs with the floor at 0.

Targets: within 1.5 points of the oracle, at least 3 above the fixed split, back on the
new best within 1,000 payments. ``--plot`` writes a PNG of the rolling approval rates.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from providers.base import utcnow
from registry.adaptive import ArmStats
from registry.instances import InstanceView
from registry.routing import decide
from registry.rules import RouteFacts, compile_ruleset, parse_ruleset

RATES = (0.92, 0.85, 0.70)
SWAPPED = (0.70, 0.85, 0.92)  # the best and the worst trade places halfway


def _view(name: str) -> InstanceView:
    now = utcnow()
    return InstanceView(
        id=uuid.uuid4(), tenant_id=None, plugin_name="sandbox", display_name=name,
        provider_type="payment", status="active", status_message=None, is_active=True,
        config={}, priority=100, weight=1, currencies=[], health="healthy", health_since=None,
        health_message=None, health_latency_ms=None, consecutive_failures=0,
        last_checked_at=None, created_at=now, updated_at=now, version=1,
    )  # fmt: skip


@dataclass
class Run:
    approval: float
    oracle: float
    fixed: float
    recovered_after: int | None  # payments after the swap; None: never
    rolling: dict[str, list[float]]


def simulate(payments: int, seed: int, window: int, exploration: float) -> Run:
    views = [_view(name) for name in ("A", "B", "C")]
    ruleset = compile_ruleset(
        parse_ruleset(
            {
                "rules": [
                    {
                        "name": "by-success",
                        "when": [{"field": "amount", "op": ">=", "value": "0"}],
                        "route": [{"instance": str(v.id)} for v in views],
                        "mode": "success_rate",
                        "exploration": exploration,
                    }
                ]
            }
        ),
        version=1,
    )
    recent: deque[tuple[int, bool]] = deque()  # (instance index, approved), newest last
    counts = [[0, 0] for _ in views]  # approved, not approved, within the window
    index = {v.id: i for i, v in enumerate(views)}

    def stats(_fields: Any, _values: Any, instance_id: uuid.UUID) -> ArmStats:
        approved, other = counts[index[instance_id]]
        return ArmStats(approved=approved, declined=other)

    draws = random.Random(seed)
    facts = RouteFacts(currency="NGN", amount_minor=10_000)
    got = oracle = fixed = 0
    on_best: list[bool] = []
    series: dict[str, list[float]] = {"tender": [], "oracle": [], "fixed": []}
    for n in range(payments):
        rates = RATES if n < payments // 2 else SWAPPED
        luck = draws.random()  # one draw per payment, shared by the three policies
        chosen = index[
            decide(
                views, tenant_id=None, facts=facts, idempotency_key=f"{seed}:{n}",
                supports=lambda _p, _c: True, ruleset=ruleset, stats=stats,
            ).route[0].id
        ]  # fmt: skip
        approved = luck < rates[chosen]
        got += approved
        oracle += luck < max(rates)
        fixed += luck < rates[n % 3]
        on_best.append(rates[chosen] == max(rates))
        recent.append((chosen, approved))
        counts[chosen][0 if approved else 1] += 1
        if len(recent) > window:
            old, was = recent.popleft()
            counts[old][0 if was else 1] -= 1
        series["tender"].append(approved)
        series["oracle"].append(luck < max(rates))
        series["fixed"].append(luck < rates[n % 3])
    swap = payments // 2
    recovered = next(
        (i - swap for i in range(swap, payments - 100) if sum(on_best[i : i + 100]) >= 80),
        None,
    )
    return Run(got / payments, oracle / payments, fixed / payments, recovered, series)


def rolling(values: list[float], width: int = 500) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def plot(run: Run, path: str, payments: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    for name, style in (("oracle", ":"), ("tender", "-"), ("fixed", "--")):
        label = {"tender": "success-rate routing", "oracle": "oracle", "fixed": "fixed 1/3 split"}
        axes.plot(rolling(run.rolling[name]), style, label=label[name])
    axes.axvline(payments // 2, color="grey", linewidth=0.8)
    axes.text(payments // 2 + 100, 0.72, "best and worst swap", color="grey")
    axes.set_xlabel("payment")
    axes.set_ylabel("approval rate, rolling 500")
    axes.set_ylim(0.65, 1.0)
    axes.legend(loc="lower left")
    axes.set_title("Success-rate routing: instances at 92%, 85%, 70%, swapped halfway")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--exploration", type=float, default=0.02)
    parser.add_argument("--plot", default=None, help="write a PNG of the first run here")
    args = parser.parse_args(argv)
    runs = [simulate(args.payments, s, args.window, args.exploration) for s in range(args.seeds)]
    bare = [simulate(args.payments, s, args.window, 0.0) for s in range(args.seeds)]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    approval = mean([r.approval for r in runs])
    oracle = mean([r.oracle for r in runs])
    fixed = mean([r.fixed for r in runs])
    recoveries = [r.recovered_after for r in runs]
    worst = max((x if x is not None else args.payments) for x in recoveries)
    floor_cost = mean([r.approval for r in bare]) - approval
    checks = [
        ("within 1.5 points of the oracle", (oracle - approval) * 100 <= 1.5),
        ("at least 3 points above the fixed split", (approval - fixed) * 100 >= 3),
        ("on the new best within 1,000 payments of the swap", worst <= 1000),
    ]
    print(f"{args.seeds} runs of {args.payments} payments, window {args.window}, "
          f"exploration {args.exploration:.0%} per instance")  # fmt: skip
    print(f"  success-rate routing  {approval:.4f}")
    print(f"  oracle                {oracle:.4f}  ({(oracle - approval) * 100:+.2f} points)")
    print(f"  fixed 1/3 split       {fixed:.4f}  ({(fixed - approval) * 100:+.2f} points)")
    print(f"  back on the new best after {recoveries} payments (worst {worst})")
    print(
        f"  the exploration floor costs {floor_cost * 100:+.2f} points "
        f"(floor 0: {mean([r.approval for r in bare]):.4f}, back on the new best after "
        f"{[r.recovered_after for r in bare]})"
    )
    for label, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {label}")
    if args.plot:
        plot(runs[0], args.plot, args.payments)
        print(f"  plot: {args.plot}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
