"""A/B experiments' results and guardrail (issue 38; the experiments: registry.experiments).

Results are read from the payments that carry an arm (``payments.route_decision``:
``experiment_id``, ``arm``) since the experiment started: per arm, the payments that
ended (approved: succeeded, or refunded or disputed after; not approved: failed; still
pending or unknown: not yet counted), the approval rate with its 95% Wilson interval,
the difference to control in points and whether it is significant (a two-proportion
z-test at 95%, once both arms have ``min_sample`` payments), and p95 provider latency of
the arm's charges as a second metric.

The guardrail (beat, every ``TENDER_EXPERIMENT_CHECK_S``, and whenever results are
read): a running experiment whose variant is significantly below control by more than
``guardrail_points`` is stopped, with a critical alert and an audit record.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select

from registry.db import Database
from registry.experiments import (
    RUNNING,
    ExperimentView,
    get_experiment,
    list_experiments,
    stop_experiment,
)
from workers.ledger.outbox import AlertEvent, add_event
from workers.ledger.records import Payment, PaymentAttempt

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
APPROVED = ("succeeded", "partially_refunded", "refunded", "disputed", "charged_back")
NOT_APPROVED = ("failed",)


class ArmResult(BaseModel):
    name: str
    instance_id: uuid.UUID
    share: int
    control: bool
    payments: int  # ended ones
    approved: int
    rate: float | None
    interval: tuple[float, float] | None  # 95% Wilson
    difference_points: float | None  # rate minus control's, in points
    significant: bool | None  # None: not enough payments yet
    p95_latency_ms: float | None


class ExperimentResults(BaseModel):
    experiment: ExperimentView
    arms: list[ArmResult]
    enough: bool  # every arm has min_sample ended payments
    summary: str


def wilson(approved: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of approved/n (Wilson 1927): sound near 0 and 1."""
    if n == 0:
        return None
    p = approved / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """z of (k1/n1 - k2/n2) under the pooled null: |z| > 1.96 is significant at 95%."""
    if n1 == 0 or n2 == 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0 if k1 / n1 == k2 / n2 else math.copysign(math.inf, k1 / n1 - k2 / n2)
    return (k1 / n1 - k2 / n2) / se


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def experiment_results(
    database: Database,
    experiment_id: uuid.UUID | str,
    *,
    within_tenant: str | None = None,
    guard: bool = True,
) -> ExperimentResults:
    """The experiment's results now (``guard``: apply the guardrail first)."""
    experiment = get_experiment(database, experiment_id, within_tenant=within_tenant)
    if guard and experiment.status == RUNNING:
        check_guardrail(database, experiment)
        experiment = get_experiment(database, experiment_id, within_tenant=within_tenant)
    tagged = Payment.route_decision["experiment_id"].as_string() == str(experiment.id)
    arm_of = Payment.route_decision["arm"].as_string()
    with database.sessions() as session:
        counts = session.execute(
            select(arm_of, Payment.status, func.count())
            .where(tagged, Payment.created_at >= experiment.started_at)
            .group_by(arm_of, Payment.status)
        ).all()
        latencies: dict[str, list[float]] = {}
        for arm in experiment.arms:
            rows = session.execute(
                select(PaymentAttempt.latency_ms)
                .join(Payment, Payment.id == PaymentAttempt.payment_id)
                .where(
                    tagged,
                    arm_of == arm["name"],
                    PaymentAttempt.operation == "charge",
                    PaymentAttempt.instance_id == uuid.UUID(arm["instance"]),
                )
                .order_by(PaymentAttempt.id.desc())
                .limit(50_000)
            ).scalars()
            latencies[arm["name"]] = [float(v) for v in rows]
    ended: dict[str, list[int]] = {arm["name"]: [0, 0] for arm in experiment.arms}
    for arm_name, status, n in counts:
        if arm_name in ended and status in APPROVED:
            ended[arm_name][0] += n
        if arm_name in ended and status in APPROVED + NOT_APPROVED:
            ended[arm_name][1] += n
    control_k, control_n = ended[experiment.control]
    enough = all(n >= experiment.min_sample for _, n in ended.values())
    arms = []
    for arm in experiment.arms:
        k, n = ended[arm["name"]]
        is_control = arm["name"] == experiment.control
        z = None if is_control else two_proportion_z(k, n, control_k, control_n)
        sampled = n >= experiment.min_sample and control_n >= experiment.min_sample
        arms.append(
            ArmResult(
                name=arm["name"], instance_id=uuid.UUID(arm["instance"]), share=arm["share"],
                control=is_control, payments=n, approved=k, rate=k / n if n else None,
                interval=wilson(k, n),
                difference_points=(
                    (k / n - control_k / control_n) * 100
                    if n and control_n and not is_control
                    else None
                ),
                significant=(abs(z) > Z95 if z is not None and sampled else None),
                p95_latency_ms=_p95(latencies[arm["name"]]),
            )
        )  # fmt: skip
    return ExperimentResults(
        experiment=experiment, arms=arms, enough=enough, summary=_summary(experiment, arms, enough)
    )


def _summary(experiment: ExperimentView, arms: list[ArmResult], enough: bool) -> str:
    if not enough:
        return f"collecting: every arm needs {experiment.min_sample} ended payments"
    better = [a for a in arms if a.significant and (a.difference_points or 0) > 0]
    worse = [a for a in arms if a.significant and (a.difference_points or 0) < 0]
    if better:
        best = max(better, key=lambda a: a.difference_points or 0)
        return f"{best.name} beats {experiment.control} by {best.difference_points:.1f} points"
    if worse:
        return ", ".join(
            f"{a.name} is {-(a.difference_points or 0):.1f} points below {experiment.control}"
            for a in worse
        )
    return "no significant difference yet"


def check_guardrail(database: Database, experiment: ExperimentView) -> bool:
    """Stop ``experiment`` if a variant is significantly worse than control by more than
    its guardrail; True if it was stopped."""
    results = experiment_results(database, experiment.id, guard=False)
    for arm in results.arms:
        below = -(arm.difference_points or 0.0)
        if arm.control or not arm.significant or below <= experiment.guardrail_points:
            continue
        reason = (
            f"guardrail: arm {arm.name!r} approved {arm.rate:.1%} against control's, "
            f"{below:.1f} points below (more than {experiment.guardrail_points:g}), "
            "significant at 95%"
        )
        try:
            stop_experiment(
                database, experiment.id, reason=reason, actor="tender",
                action="experiment.guardrail",
            )  # fmt: skip
        except Exception:  # another process stopped it first
            return False
        with database.transaction() as session:
            add_event(
                session,
                AlertEvent(
                    severity="critical",
                    title=f"experiment {experiment.name!r} stopped by its guardrail",
                    text=reason,
                    instance_id=arm.instance_id,
                    tenant_id=experiment.tenant_id,
                ),
            )
        log.warning("experiment %s stopped: %s", experiment.name, reason)
        return True
    return False


def check_all_guardrails(database: Database) -> int:
    """The beat's sweep: every running experiment's guardrail. How many were stopped."""
    stopped = 0
    for experiment in list_experiments(database):
        if experiment.status == RUNNING:
            stopped += check_guardrail(database, experiment)
    return stopped


def approval_history(
    database: Database, *, hours: int = 24, within_tenant: str | None = None
) -> list[dict[str, Any]]:
    """Per instance and hour, its charges' approval rate (approved over approved,
    declined and failed), for the console's chart of rates over time."""
    from datetime import timedelta

    from providers.base import utcnow
    from registry.catalogue import catalogue
    from workers.ledger.outcomes import classify

    since = utcnow() - timedelta(hours=hours)
    hour = func.strftime("%Y-%m-%d %H:00", PaymentAttempt.created_at)
    if database.engine.dialect.name == "postgresql":
        hour = func.to_char(
            func.date_trunc("hour", PaymentAttempt.created_at), "YYYY-MM-DD HH24:00"
        )
    query = (
        select(
            hour, PaymentAttempt.instance_id, PaymentAttempt.plugin_name, PaymentAttempt.outcome,
            PaymentAttempt.error_code, func.count(),
        )
        .where(PaymentAttempt.operation == "charge", PaymentAttempt.created_at >= since)
        .group_by(
            hour, PaymentAttempt.instance_id, PaymentAttempt.plugin_name, PaymentAttempt.outcome,
            PaymentAttempt.error_code,
        )
    )  # fmt: skip
    if within_tenant is not None:
        query = query.join(Payment, Payment.id == PaymentAttempt.payment_id).where(
            Payment.tenant_id == within_tenant
        )
    buckets: dict[tuple[str, uuid.UUID], list[int]] = {}
    with database.sessions() as session:
        for at, instance_id, plugin, outcome, code, n in session.execute(query).all():
            kind = classify(outcome, plugin, code, catalogue)
            if kind is None or instance_id is None:
                continue
            bucket = buckets.setdefault((at, instance_id), [0, 0])
            bucket[0] += n if kind == "approved" else 0
            bucket[1] += n
    return [
        {"hour": at, "instance_id": instance_id, "approved": k, "attempts": n, "rate": k / n}
        for (at, instance_id), (k, n) in sorted(buckets.items(), key=lambda kv: kv[0][0])
    ]
