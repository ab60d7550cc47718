"""A/B experiments between instances (issue 38): arms by share, stable per payment,
results with Wilson intervals and a significance test, the guardrail that stops a worse
variant with an alert and an audit record, and promotion of a winner."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from config.settings import get_settings
from registry.audit import AuditRecord
from registry.db import get_database
from registry.errors import RegistryError
from registry.experiments import create_experiment, promote_arm, stop_experiment
from registry.rules import RouteFacts
from workers import runtime
from workers.events.relay import InlineRelay
from workers.ledger.outbox import outbox_table
from workers.payments.client import get_payment, request_payment
from workers.payments.experiments import (
    check_all_guardrails,
    experiment_results,
    two_proportion_z,
    wilson,
)
from workers.payments.processor import PaymentProcessor


class Quiet:
    def publish(self, rows: Any) -> None:
        pass


def arms_of(control: Any, variant: Any, split: tuple[int, int] = (50, 50)) -> dict[str, Any]:
    return {
        "name": "stripe-vs-backup",
        "arms": [
            {"name": "control", "instance": str(control.id), "share": split[0]},
            {"name": "variant", "instance": str(variant.id), "share": split[1]},
        ],
        "control": "control",
        "min_sample": 20,
        "guardrail_points": 5,
    }


def two(tmp_path: Any, **variant_config: Any) -> tuple[Any, Any]:
    registry = runtime.registry()
    book = str(tmp_path / "book.db")
    control = registry.create_instance(
        "sandbox", {"charge_book": book}, display_name="control", priority=1, is_active=True
    )
    variant = registry.create_instance(
        "sandbox", {"charge_book": book, **variant_config}, display_name="variant", priority=2,
        is_active=True,
    )  # fmt: skip
    return control, variant


def test_wilson_and_the_z_test_match_their_textbook_values() -> None:
    low, high = wilson(5, 10) or (0, 0)
    assert round(low, 4) == 0.2366 and round(high, 4) == 0.7634
    assert wilson(0, 0) is None
    # pooled 0.85: se = sqrt(0.85 * 0.15 * (1/100 + 1/100)) = 0.0505, z = 0.10 / 0.0505
    assert round(two_proportion_z(90, 100, 80, 100) or 0, 2) == 1.98


def test_an_experiment_is_checked_when_it_starts(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    control, variant = two(tmp_path)
    bad = arms_of(control, variant, (60, 60))
    with pytest.raises(RegistryError, match="shares add up to 100"):
        create_experiment(get_database(), bad)
    with pytest.raises(RegistryError, match="control: 'nobody'"):
        create_experiment(get_database(), arms_of(control, variant) | {"control": "nobody"})
    theirs = runtime.registry().create_instance("sandbox", {}, tenant_id="t-b", is_active=True)
    with pytest.raises(RegistryError, match="in this scope"):
        create_experiment(get_database(), arms_of(control, theirs))
    create_experiment(get_database(), arms_of(control, variant))
    with pytest.raises(RegistryError, match="already running"):
        create_experiment(get_database(), arms_of(control, variant) | {"name": "again"})


def test_payments_are_split_by_share_and_keep_their_arm(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    control, variant = two(tmp_path)
    create_experiment(get_database(), arms_of(control, variant, (80, 20)))
    registry = runtime.registry()
    registry.refresh(force=True)
    facts = RouteFacts(currency="NGN", amount_minor=1000)
    firsts = Counter()
    for n in range(4000):
        made = registry.decide(facts, tenant_id=None, idempotency_key=f"k-{n}")
        again = registry.decide(facts, tenant_id=None, idempotency_key=f"k-{n}")
        assert made.route == again.route and made.experiment == again.experiment
        firsts[made.route[0].display_name] += 1
        assert made.record()["arm"] == ("control" if made.route[0].id == control.id else "variant")
    assert 0.77 * 4000 <= firsts["control"] <= 0.83 * 4000


def _pay_through(proc: PaymentProcessor, count: int) -> None:
    for n in range(count):
        amount = f"{10 + n}.00"
        payment_id = request_payment(f"o-x-{n}", amount, "NGN", "ada@example.com").payment_id
        proc.process(payment_id)


def test_results_then_the_guardrail_stops_a_worse_variant(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the variant declines every third amount: about 67% approved against control's 100%
    declines = [(10 + n) * 100 for n in range(0, 400, 3)]
    control, variant = two(tmp_path, decline_amounts_minor=declines)
    experiment = create_experiment(get_database(), arms_of(control, variant), actor="ops")
    registry = runtime.registry()
    registry.refresh(force=True)
    proc = PaymentProcessor(
        get_database(), registry, runtime.provider_loop(),
        InlineRelay(get_database(), Quiet()),  # type: ignore[arg-type]
        get_settings(),
    )  # fmt: skip
    _pay_through(proc, 160)
    results = experiment_results(get_database(), experiment.id, guard=False)
    by_name = {arm.name: arm for arm in results.arms}
    control_arm, variant_arm = by_name["control"], by_name["variant"]
    assert control_arm.payments + variant_arm.payments == 160
    assert control_arm.rate == 1.0 and variant_arm.rate is not None and variant_arm.rate < 0.8
    assert variant_arm.interval is not None and variant_arm.interval[1] < 1.0
    assert variant_arm.significant is True and (variant_arm.difference_points or 0) < -5
    assert control_arm.p95_latency_ms is not None
    assert "variant is" in results.summary and "below control" in results.summary
    # the beat's sweep stops it, alerts and audits
    assert check_all_guardrails(get_database()) == 1
    stopped = experiment_results(get_database(), experiment.id)
    assert stopped.experiment.status == "stopped"
    assert "guardrail: arm 'variant'" in (stopped.experiment.ended_reason or "")
    with get_database().sessions() as session:
        actions = session.execute(select(AuditRecord.action)).scalars().all()
        alerts = (
            session.execute(
                select(outbox_table.c.payload).where(outbox_table.c.event_type == "alert.raised")
            )
            .scalars()
            .all()
        )
    assert "experiment.guardrail" in actions
    assert any("stopped by its guardrail" in a["title"] for a in alerts)
    # stopped: payments route as without it (control by priority) and carry no arm
    registry.refresh(force=True)
    payment_id = request_payment("o-after", "99.00", "NGN", "ada@example.com").payment_id
    proc.process(payment_id)
    assert get_payment(payment_id).route is not None
    assert "arm" not in (get_payment(payment_id).route or {})


def test_promoting_a_winner_routes_its_instance_first(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    control, variant = two(tmp_path)
    experiment = create_experiment(get_database(), arms_of(control, variant))
    with pytest.raises(RegistryError, match="not an arm"):
        promote_arm(get_database(), experiment.id, "nobody")
    promoted = promote_arm(get_database(), experiment.id, "variant", actor="ops")
    assert promoted.status == "promoted" and promoted.winner == "variant"
    registry = runtime.registry()
    registry.refresh(force=True)
    assert registry.get_instance(variant.id).priority < registry.get_instance(control.id).priority
    route = registry.decide(RouteFacts(currency="NGN"), tenant_id=None, idempotency_key="k").route
    assert route[0].id == variant.id
    with pytest.raises(RegistryError, match="not running"):
        stop_experiment(get_database(), experiment.id, reason="late")


def test_experiments_and_rates_over_rest_cli_and_console(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from surfaces.cli.main import app as cli_app
    from surfaces.http.app import create_app

    control, variant = two(tmp_path)
    with TestClient(create_app()) as client:
        bad = client.post("/api/experiments", json=arms_of(control, variant, (70, 70)))
        assert bad.status_code == 422 and "shares add up to 100" in bad.json()["detail"]
        made = client.post("/api/experiments", json=arms_of(control, variant))
        assert made.status_code == 201, made.text
        experiment_id = made.json()["id"]
        registry = runtime.registry()
        registry.refresh(force=True)
        proc = PaymentProcessor(
            get_database(), registry, runtime.provider_loop(),
            InlineRelay(get_database(), Quiet()),  # type: ignore[arg-type]
            get_settings(),
        )  # fmt: skip
        _pay_through(proc, 30)
        results = client.get(f"/api/experiments/{experiment_id}").json()
        assert sum(arm["payments"] for arm in results["arms"]) == 30
        assert results["summary"].startswith("collecting")
        rates = client.get("/api/routing/outcomes").json()
        assert {row["instance_id"] for row in rates} == {str(control.id), str(variant.id)}
        assert all(row["rate"] == 1.0 for row in rates)
        page = client.get("/admin/experiments").text
        assert 'id="rates"' in page and "stripe-vs-backup" in page and 'data-arm="variant"' in page
        shown = CliRunner().invoke(cli_app, ["experiments", "results", experiment_id, "--json"])
        assert (
            shown.exit_code == 0 and json.loads(shown.output)["experiment"]["status"] == "running"
        )
        stopped = client.post(f"/api/experiments/{experiment_id}/stop", json={"reason": "done"})
        assert stopped.json()["status"] == "stopped"
        promoted = client.post(f"/api/experiments/{experiment_id}/promote", json={"arm": "control"})
        assert promoted.json()["winner"] == "control"
        assert client.get("/api/experiments/not-an-id").status_code == 404
