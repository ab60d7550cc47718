"""Routing rules (issue 37): validation at the boundary, first match wins, the default,
reasons for every instance left out, and the properties routing must keep for any
request and any ruleset. Pure functions: no database here."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.routing import decide
from registry.rules import RouteFacts, RulesError, compile_ruleset, parse_ruleset
from tests.unit.test_routing import instance, supports


def ruleset(raw: dict[str, Any], version: int = 1) -> Any:
    return compile_ruleset(parse_ruleset(raw), id=uuid.uuid4(), version=version)


def target(view: Any, priority: int = 100, weight: int = 1) -> dict[str, Any]:
    return {"instance": str(view.id), "priority": priority, "weight": weight}


def facts(**given: Any) -> RouteFacts:
    given.setdefault("currency", "NGN")
    given.setdefault("amount_minor", 10_000)
    return RouteFacts(**given)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where", "says"),
    [
        ({"rules": "x"}, "rules", "valid list"),
        (
            {"rules": [{"name": "a", "when": [{"field": "colour", "op": "=", "value": "x"}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].when[0]", "not one of",
        ),
        (
            {"rules": [{"name": "a", "when": [{"field": "amount", "op": ">", "value": 10.5}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].when[0].value", "float",
        ),
        (
            {"rules": [{"name": "a", "when": [{"field": "currency", "op": "in", "value": "NGN"}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].when[0]", "takes a list",
        ),
        (
            {"rules": [{"name": "a", "when": [{"field": "currency", "op": "=", "value": "NAIRA"}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].when[0]", "ISO 4217",
        ),
        (
            {"rules": [{"name": "a", "when": [{"field": "currency", "op": "<", "value": "NGN"}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].when[0]", "compares amounts",
        ),
        (
            {"rules": [{"name": "a", "when": [{"field": "card_bin", "op": "prefix", "value": "4x"}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].when[0]", "BIN",
        ),
        (
            {"rules": [{"name": "a", "when": [{"field": "currency", "op": "=", "value": "NGN"}],
                        "route": []}]},
            "rules[0].route", "at least 1",
        ),
        (
            {"rules": [{"name": "Big One", "when": [{"field": "currency", "op": "=", "value": "NGN"}],
                        "route": [{"instance": str(uuid.uuid4())}]}]},
            "rules[0].name", "a-z",
        ),
        ({"rules": [], "weights": {}}, "weights", "Extra inputs"),
    ],
)  # fmt: skip
def test_a_bad_ruleset_is_refused_naming_the_field(raw: Any, where: str, says: str) -> None:
    with pytest.raises(RulesError) as refused:
        parse_ruleset(raw)
    assert refused.value.field == where
    assert says in refused.value.message


def test_two_rules_of_one_name_are_refused() -> None:
    rule = {
        "name": "a",
        "when": [{"field": "currency", "op": "=", "value": "NGN"}],
        "route": [{"instance": str(uuid.uuid4())}],
    }
    with pytest.raises(RulesError, match="two rules are called 'a'"):
        parse_ruleset({"rules": [rule, rule]})


# -- deciding -------------------------------------------------------------------------------


def test_the_first_matching_rule_routes_and_the_decision_says_which() -> None:
    paystack, stripe, backup = instance("paystack"), instance("stripe"), instance("backup")
    rules = ruleset(
        {
            "rules": [
                {
                    "name": "big-naira",
                    "when": [
                        {"field": "currency", "op": "=", "value": "NGN"},
                        {"field": "amount", "op": ">=", "value": "1000"},
                    ],
                    "route": [target(stripe, 1), target(backup, 2)],
                },
                {
                    "name": "naira",
                    "when": [{"field": "currency", "op": "=", "value": "NGN"}],
                    "route": [target(paystack)],
                },
            ]
        },
        version=3,
    )
    views = [paystack, stripe, backup]

    def route(f: RouteFacts) -> Any:
        return decide(
            views, tenant_id=None, facts=f, idempotency_key="k", supports=supports,
            ruleset=rules, explain=True,
        )  # fmt: skip

    big = route(facts(amount_minor=100_000))  # 1,000.00 NGN
    assert [v.display_name for v in big.route] == ["stripe", "backup"]
    assert big.rule == "big-naira" and big.ruleset_version == 3
    assert {x.instance.display_name: x.reason for x in big.excluded} == {
        "paystack": "not in rule 'big-naira'"
    }
    small = route(facts(amount_minor=99_999))  # 999.99 NGN
    assert [v.display_name for v in small.route] == ["paystack"]
    assert small.rule == "naira"
    usd = route(facts(currency="USD", amount_minor=100))
    assert usd.rule is None and "no rule matched" in usd.reason
    assert {v.display_name for v in usd.route} == {"paystack", "stripe", "backup"}


def test_the_default_route_applies_when_no_rule_matches() -> None:
    a, b = instance("a"), instance("b")
    rules = ruleset(
        {
            "rules": [
                {
                    "name": "kenya",
                    "when": [{"field": "billing_country", "op": "=", "value": "KE"}],
                    "route": [target(a)],
                }
            ],
            "default": [target(b)],
        }
    )
    made = decide(
        [a, b], tenant_id=None, facts=facts(), idempotency_key="k", supports=supports,
        ruleset=rules, explain=True,
    )  # fmt: skip
    assert [v.display_name for v in made.route] == ["b"]
    assert "default route" in made.reason
    assert [(x.instance.display_name, x.reason) for x in made.excluded] == [
        ("a", "not in the default route")
    ]


def test_a_fact_billing_did_not_send_never_matches_even_not_equal() -> None:
    a, b = instance("a"), instance("b")
    rules = ruleset(
        {
            "rules": [
                {
                    "name": "not-visa",
                    "when": [{"field": "card_brand", "op": "!=", "value": "visa"}],
                    "route": [target(a)],
                }
            ],
            "default": [target(b)],
        }
    )

    def first(f: RouteFacts) -> str:
        made = decide(
            [a, b], tenant_id=None, facts=f, idempotency_key="k", supports=supports, ruleset=rules
        )
        return made.route[0].display_name

    assert first(facts()) == "b"
    assert first(facts(card_brand="mastercard")) == "a"
    assert first(facts(card_brand="visa")) == "b"


def test_every_operator_on_every_kind_of_fact() -> None:
    f = facts(
        amount_minor=150_050,  # 1,500.50 NGN
        payment_method="card",
        billing_country="NG",
        card_brand="verve",
        card_bin="506099",
        metadata={"segment": "enterprise", "plan_seats": 40},
    )
    cases = [
        ("amount", "=", "1500.5", True),
        ("amount", "!=", "1500.50", False),
        ("amount", "<", "1500.51", True),
        ("amount", "<=", "1500.50", True),
        ("amount", ">", "1500.50", False),
        ("amount", ">=", "1500", True),
        ("amount", "in", ["1500.50", "10"], True),
        ("payment_method", "not in", ["ussd", "bank"], True),
        ("billing_country", "in", ["GH", "NG"], True),
        ("card_brand", "=", "verve", True),
        ("card_bin", "prefix", "5060", True),
        ("card_bin", "prefix", ["4", "51"], False),
        ("metadata.segment", "=", "enterprise", True),
        ("metadata.segment", "prefix", "enter", True),
        ("metadata.plan_seats", ">", "39", True),
        ("metadata.plan_seats", "<", "40", False),
        ("metadata.missing", "!=", "x", False),
    ]
    a = instance("a")
    for field, op, value, matches in cases:
        rules = ruleset(
            {
                "rules": [
                    {"name": "r", "when": [{"field": field, "op": op, "value": value}],
                     "route": [target(a)]}
                ],
                "default": [],
            }
        )  # fmt: skip
        made = decide([a], tenant_id=None, facts=f, idempotency_key="k", supports=supports,
                      ruleset=rules)  # fmt: skip
        assert (made.rule == "r") is matches, (field, op, value)


def test_explain_names_why_each_instance_was_left_out() -> None:
    off = instance("off", is_active=False)
    broken = instance("broken", status="error", status_message="401 from the provider")
    open_circuit = instance("open", health="unhealthy")
    usd_only = instance("usd-only", currencies=["USD"])
    naira_plugin = instance("kes-no", plugin_name="naira_only")
    fine = instance("fine")
    made = decide(
        [off, broken, open_circuit, usd_only, naira_plugin, fine], tenant_id=None,
        facts=facts(currency="KES"), idempotency_key="k", supports=supports, explain=True,
    )  # fmt: skip
    assert [v.display_name for v in made.route] == ["fine"]
    reasons = {x.instance.display_name: x.reason for x in made.excluded}
    assert reasons == {
        "off": "switched off",
        "broken": "in error: 401 from the provider",
        "open": "circuit open (health check unhealthy)",
        "usd-only": "KES is not in its currencies (USD)",
        "kes-no": "naira_only does not take KES",
    }


def test_a_saved_method_is_bound_to_its_issuer_whatever_the_rules_say() -> None:
    issuer, other = instance("issuer"), instance("other")
    rules = ruleset(
        {"rules": [{"name": "all", "when": [{"field": "currency", "op": "=", "value": "NGN"}],
                    "route": [target(other)]}]}
    )  # fmt: skip
    made = decide(
        [issuer, other], tenant_id=None, facts=facts(), idempotency_key="k", supports=supports,
        ruleset=rules, pinned_instance_id=issuer.id, explain=True,
    )  # fmt: skip
    assert [v.display_name for v in made.route] == ["issuer"] and made.rule is None
    assert "saved method bound to" in made.reason
    assert [(x.instance.display_name, x.reason) for x in made.excluded] == [
        ("other", "the saved method is bound to another instance")
    ]


def test_another_tenants_instances_are_never_named_in_an_explanation() -> None:
    mine, theirs, platform = (
        instance("mine", tenant_id="t-a"),
        instance("theirs", tenant_id="t-b"),
        instance("platform"),
    )
    made = decide(
        [mine, theirs, platform], tenant_id="t-a", facts=facts(), idempotency_key="k",
        supports=supports, explain=True,
    )  # fmt: skip
    assert [v.display_name for v in made.route] == ["mine"]
    assert made.excluded == ()


# -- properties -------------------------------------------------------------------------------

CURRENCIES = ["NGN", "USD", "KES"]
COUNTRIES = ["NG", "KE", "US"]


@st.composite
def instances(draw: st.DrawFn) -> list[Any]:
    count = draw(st.integers(1, 6))
    return [
        instance(
            f"i{n}",
            plugin_name=draw(st.sampled_from(["sandbox", "naira_only"])),
            is_active=draw(st.booleans()),
            health=draw(st.sampled_from(["healthy", "unhealthy", "unknown"])),
            status=draw(st.sampled_from(["active", "error"])),
            currencies=draw(st.lists(st.sampled_from(CURRENCIES), max_size=2, unique=True)),
            priority=draw(st.integers(0, 3)),
            weight=draw(st.integers(1, 5)),
        )
        for n in range(count)
    ]


def conditions() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(
            lambda v, op: {"field": "currency", "op": op, "value": v},
            st.sampled_from(CURRENCIES), st.sampled_from(["=", "!="]),
        ),
        st.builds(
            lambda v, op: {"field": "amount", "op": op, "value": str(v)},
            st.integers(0, 2000), st.sampled_from(["<", "<=", ">", ">=", "=", "!="]),
        ),
        st.builds(
            lambda v: {"field": "billing_country", "op": "in", "value": v},
            st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=2, unique=True),
        ),
        st.builds(
            lambda v: {"field": "metadata.plan", "op": "=", "value": v},
            st.sampled_from(["free", "pro"]),
        ),
    )  # fmt: skip


def holds(condition: dict[str, Any], f: RouteFacts) -> bool:
    """An independent reading of one condition, to check the compiled one against."""
    field, op, value = condition["field"], condition["op"], condition["value"]
    if field == "amount":
        fact: Any = Decimal(f.amount_minor) / 100
        value = Decimal(value)
    elif field == "metadata.plan":
        fact = f.metadata.get("plan")
    else:
        fact = getattr(f, field)
    if fact is None:
        return False
    return {
        "=": lambda: fact == value,
        "!=": lambda: fact != value,
        "<": lambda: fact < value,
        "<=": lambda: fact <= value,
        ">": lambda: fact > value,
        ">=": lambda: fact >= value,
        "in": lambda: fact in value,
    }[op]()


@settings(max_examples=300, deadline=None)
@given(
    views=instances(),
    data=st.data(),
    currency=st.sampled_from(CURRENCIES),
    amount_minor=st.integers(1, 250_000),
    country=st.one_of(st.none(), st.sampled_from(COUNTRIES)),
    plan=st.one_of(st.none(), st.sampled_from(["free", "pro"])),
)
def test_the_first_matching_rule_applies_and_the_route_only_holds_instances_that_accept(
    views: list[Any],
    data: st.DataObject,
    currency: str,
    amount_minor: int,
    country: str | None,
    plan: str | None,
) -> None:
    raw_rules = [
        {
            "name": f"r{n}",
            "when": data.draw(st.lists(conditions(), min_size=1, max_size=3)),
            "route": [
                target(v, data.draw(st.integers(0, 3)), data.draw(st.integers(1, 5)))
                for v in data.draw(st.lists(st.sampled_from(views), min_size=1, unique_by=id))
            ],
        }
        for n in range(data.draw(st.integers(0, 5)))
    ]
    rules = ruleset({"rules": raw_rules})
    f = RouteFacts(
        currency=currency,
        amount_minor=amount_minor,
        billing_country=country,
        metadata={"plan": plan} if plan else {},
    )
    made = decide(
        views, tenant_id=None, facts=f, idempotency_key="k", supports=supports, ruleset=rules
    )
    expected = next((r for r in raw_rules if all(holds(c, f) for c in r["when"])), None)
    assert made.rule == (expected["name"] if expected else None)
    allowed = {t["instance"] for t in expected["route"]} if expected else {str(v.id) for v in views}
    for chosen in made.route:
        assert str(chosen.id) in allowed
        assert chosen.routable
        assert not chosen.currencies or currency in chosen.currencies
        assert supports(chosen.plugin_name, currency)
    # and nothing that could take it is left out of the rule's targets
    takers = {
        str(v.id)
        for v in views
        if v.routable and (not v.currencies or currency in v.currencies)
        and supports(v.plugin_name, currency)
    }  # fmt: skip
    assert {str(v.id) for v in made.route} == takers & allowed
