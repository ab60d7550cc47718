"""Success-rate routing (issue 38): Thompson sampling over windowed outcomes, stable per
payment, with an exploration floor and elimination; outcomes counted from the ledger's
attempts, per segment, without writing anything on the payment path."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from registry.adaptive import Adaptive, ArmStats, order_by_success
from registry.routing import decide
from registry.rules import RouteFacts, RulesError, compile_ruleset, parse_ruleset
from tests.unit.test_routing import instance, supports


def success_rule(views: list[Any], **extra: Any) -> Any:
    return compile_ruleset(
        parse_ruleset(
            {
                "rules": [
                    {
                        "name": "by-success",
                        "when": [{"field": "amount", "op": ">=", "value": "0"}],
                        "route": [{"instance": str(v.id)} for v in views],
                        "mode": "success_rate",
                        **extra,
                    }
                ]
            }
        ),
        version=1,
    )


def test_the_order_is_stable_for_a_payment_and_favours_the_better_instance() -> None:
    good, poor = instance("good"), instance("poor")
    arms = [ArmStats(approved=460, declined=40), ArmStats(approved=350, declined=150)]
    first = [order_by_success([good, poor], arms, seed, Adaptive())[0][0] for seed in range(2000)]
    again = [order_by_success([good, poor], arms, seed, Adaptive())[0][0] for seed in range(2000)]
    assert first == again  # the same key, the same order: retries go where the first went
    shares = Counter(v.display_name for v in first)
    # the floor sends about 2% to each; Thompson sampling sends nearly all the rest to good
    assert 0.01 * 2000 <= shares["poor"] <= 0.04 * 2000
    assert shares["good"] >= 0.95 * 2000


def test_the_exploration_floor_measures_every_instance() -> None:
    views = [instance(n) for n in "abc"]
    arms = [ArmStats(approved=1000), ArmStats(declined=1000), ArmStats(declined=1000)]
    picks = Counter(
        order_by_success(views, arms, seed, Adaptive(exploration=0.05))[0][0].display_name
        for seed in range(10_000)
    )
    assert 400 <= picks["b"] <= 600 and 400 <= picks["c"] <= 600  # 5% each


def test_an_instance_under_the_threshold_is_eliminated_and_says_why() -> None:
    good, bad, new = instance("good"), instance("bad"), instance("new")
    arms = [ArmStats(approved=90, declined=10), ArmStats(approved=8, failed=32), ArmStats(1)]
    params = Adaptive(eliminate_below=0.5, min_samples=20)
    order, eliminated, _ = order_by_success([good, bad, new], arms, 7, params)
    assert [v.display_name for v in order] == ["good", "new"] or [
        v.display_name for v in order
    ] == ["new", "good"]
    assert [(v.display_name, why) for v, why in eliminated] == [
        ("bad", "eliminated: success rate 20% under 50% over 40 recent attempts")
    ]
    # every instance under it: the route keeps them all rather than having none
    order, eliminated, _ = order_by_success([bad], [arms[1]], 7, params)
    assert order == [bad] and eliminated == []


def test_a_success_rate_rule_explains_its_choice_and_its_eliminations() -> None:
    good, bad = instance("good"), instance("bad")
    rules = success_rule([good, bad], eliminate_below=0.5, min_samples=10)
    table = {good.id: ArmStats(approved=95, declined=5), bad.id: ArmStats(approved=2, failed=18)}

    def stats(fields: Any, values: Any, instance_id: uuid.UUID) -> ArmStats:
        assert fields == ("currency", "payment_method") and values == ("NGN", "card")
        return table[instance_id]

    made = decide(
        [good, bad], tenant_id=None, facts=RouteFacts(currency="NGN", amount_minor=500),
        idempotency_key="k-1", supports=supports, ruleset=rules, stats=stats, explain=True,
    )  # fmt: skip
    assert [v.display_name for v in made.route] == ["good"]
    assert (
        "good first" in made.reason and "segment currency=NGN, payment_method=card" in made.reason
    )
    assert [(x.instance.display_name, x.reason) for x in made.excluded] == [
        ("bad", "eliminated: success rate 10% under 50% over 20 recent attempts")
    ]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"segment_by": ["amount"]}, "rules[0].segment_by"),
        ({"exploration": 0.5}, "rules[0].exploration"),
        ({"mode": "fastest"}, "rules[0].mode"),
        ({"eliminate_below": 1.5}, "rules[0].eliminate_below"),
    ],
)
def test_success_rate_parameters_are_checked(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(RulesError) as refused:
        success_rule([instance("a")], **extra)
    assert refused.value.field == field


# -- outcomes from the ledger ------------------------------------------------------------------


def _attempts(rows: list[tuple[Any, str, str | None, str, dict[str, Any]]]) -> None:
    """(instance, outcome, code, currency, metadata): one payment and one charge each."""
    from providers.base import utcnow
    from registry.db import get_database
    from workers.ledger.records import PaymentAttempt
    from workers.payments.client import _validated, record_payment

    for n, (view, outcome, code, currency, metadata) in enumerate(rows):
        fields = _validated(
            f"o-{uuid.uuid4().hex[:8]}-{n}", "10.00", currency, "ada@example.com", "card",
            metadata, None, None,
        )  # fmt: skip
        payment, _ = record_payment(get_database(), fields)
        with get_database().transaction() as session:
            session.add(
                PaymentAttempt(
                    payment_id=payment.id, instance_id=view.id, plugin_name="sandbox",
                    operation="charge", outcome=outcome, error_code=code, latency_ms=1.0,
                    created_at=utcnow(),
                )
            )  # fmt: skip


def test_outcomes_are_counted_per_segment_from_the_ledgers_attempts(database_url: str) -> None:
    from registry.catalogue import catalogue
    from registry.db import get_database
    from workers import runtime
    from workers.ledger.outcomes import read_window

    a = runtime.registry().create_instance("sandbox", {}, display_name="a", is_active=True)
    pro = {"plan": "pro"}
    _attempts(
        [(a, "succeeded", None, "NGN", pro)] * 3
        + [(a, "failed", "declined", "NGN", pro)] * 2  # hard: the issuer said no
        + [(a, "failed", "processing_error", "NGN", {})]  # an outage: the provider failed
        + [(a, "unavailable", "connection_failed", "NGN", {})]
        + [(a, "pending", None, "NGN", pro), (a, "config_error", "key_rejected", "NGN", pro)]
        + [(a, "succeeded", None, "USD", pro)]
    )
    window = read_window(
        get_database(), catalogue, {("currency",), ("currency", "metadata.plan")}, 900
    )
    assert window[("currency",)][(("NGN",), a.id)] == ArmStats(approved=3, declined=2, failed=2)
    assert window[("currency",)][(("USD",), a.id)] == ArmStats(approved=1)
    by_plan = window[("currency", "metadata.plan")]
    assert by_plan[(("NGN", "pro"), a.id)] == ArmStats(approved=3, declined=2)
    assert by_plan[(("NGN", None), a.id)] == ArmStats(failed=2)


def test_the_worker_routes_by_the_ledgers_outcomes(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from config.settings import get_settings
    from registry.db import get_database
    from registry.rulesets import activate_ruleset, create_draft
    from workers import runtime
    from workers.events.relay import InlineRelay
    from workers.payments.client import get_payment, request_payment
    from workers.payments.processor import PaymentProcessor

    class Quiet:
        def publish(self, rows: Any) -> None:
            pass

    registry = runtime.registry()
    book = str(tmp_path / "book.db")
    good = registry.create_instance(
        "sandbox", {"charge_book": book}, display_name="good", is_active=True
    )
    bad = registry.create_instance(
        "sandbox", {"charge_book": book}, display_name="bad", is_active=True
    )
    _attempts(
        [(good, "succeeded", None, "NGN", {})] * 30 + [(bad, "failed", "declined", "NGN", {})] * 30
    )
    rules = {
        "rules": [
            {
                "name": "by-success",
                "when": [{"field": "currency", "op": "=", "value": "NGN"}],
                "route": [{"instance": str(good.id)}, {"instance": str(bad.id)}],
                "mode": "success_rate",
                "exploration": 0,
                "eliminate_below": 0.3,
            }
        ]
    }
    draft = create_draft(get_database(), rules)
    activate_ruleset(get_database(), draft.id)
    registry.refresh(force=True)
    processor = PaymentProcessor(
        get_database(), registry, runtime.provider_loop(),
        InlineRelay(get_database(), Quiet()),  # type: ignore[arg-type]
        get_settings(),
    )  # fmt: skip
    for n in range(10):
        payment_id = request_payment(f"o-sr-{n}", "25.00", "NGN", "ada@example.com").payment_id
        processor.process(payment_id)
        view = get_payment(payment_id)
        assert view.instance_id == good.id and view.status.value == "succeeded"
    assert view.route is not None
    assert "good first, by recent success rate" in view.route["reason"]
    from workers.payments.routing import explain_payment

    told = explain_payment(registry, payment_id)
    assert [(x.display_name, x.reason) for x in told.left_out] == [
        ("bad", "eliminated: success rate 0% under 30% over 30 recent attempts")
    ]
