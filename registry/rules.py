"""Routing rules as data: a ruleset per scope (a tenant, or the global instances).

A ruleset is an ordered list of rules and a default. A rule is a name, a list of
conditions (all must hold) and a target: an ordered list of instances with a priority
and a weight each, as instances have today. The first rule whose conditions all hold
routes the payment; when none does, the default target (or, without one, every
instance of the scope by its own priority and weight).

Conditions read the payment's routing facts (:class:`RouteFacts`): ``currency``,
``amount`` (in the currency's units, ``"100.50"``), ``payment_method``,
``billing_country``, ``card_brand``, ``card_bin`` and ``metadata.<key>``. A fact the
payment did not carry makes its condition false whatever the operator, ``!=`` and
``not in`` included: a rule never matches on what billing did not say.

Rulesets are validated here, at the boundary, with errors naming the field
(``rules[2].when[0].value``), and compiled once into plain tuples so that evaluating
twenty rules costs a few microseconds (registry.routing).
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from providers.money import CURRENCY_EXPONENTS
from registry.adaptive import Adaptive
from registry.errors import RegistryError

Op = Literal["=", "!=", "in", "not in", "<", "<=", ">", ">=", "prefix"]
FIELDS = (
    "currency",
    "amount",
    "payment_method",
    "billing_country",
    "card_brand",
    "card_bin",
)
_ORDERED = {"<", "<=", ">", ">="}
_LISTS = {"in", "not in"}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)
_METADATA_KEY = re.compile(r"metadata\.[A-Za-z0-9_.-]{1,64}", re.ASCII)
_COUNTRY = re.compile(r"[A-Z]{2}", re.ASCII)
_BIN = re.compile(r"[0-9]{1,8}", re.ASCII)
MAX_RULES = 200


class RulesError(RegistryError):
    """A ruleset that cannot be saved: ``field`` names where (``rules[1].when[0].op``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Op
    value: str | list[str]

    @field_validator("value", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # Numbers are taken as text so that 100.10 keeps its places; floats are refused
        # (an amount is never a float, not even in a rule).
        if isinstance(value, float):
            raise ValueError('write amounts as text ("100.50"), never as a float')
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list):
            return [cls._text(v) for v in value]
        return value

    @model_validator(mode="after")
    def _fits_the_field(self) -> Condition:
        name, op, value = self.field, self.op, self.value
        if name not in FIELDS and not _METADATA_KEY.fullmatch(name):
            raise ValueError(f"field {name!r} is not one of {', '.join(FIELDS)} or metadata.<key>")
        if op != "prefix" and (op in _LISTS) != isinstance(value, list):
            raise ValueError(
                f"{op!r} takes a list of values" if op in _LISTS else f"{op!r} takes one value"
            )
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > 500:
            raise ValueError("a list holds 1 to 500 values")
        if op in _ORDERED and name != "amount" and not name.startswith("metadata."):
            raise ValueError(f"{op!r} compares amounts and numeric metadata, not {name}")
        if op == "prefix" and name not in ("card_bin",) and not name.startswith("metadata."):
            raise ValueError(f"'prefix' applies to card_bin and metadata, not {name}")
        for v in values:
            _check_value(name, op, v)
        return self


def _check_value(name: str, op: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ValueError("each value is text of 1 to 200 characters")
    if name == "currency" and value not in CURRENCY_EXPONENTS:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code (upper case, as 'NGN')")
    if name == "billing_country" and not _COUNTRY.fullmatch(value):
        raise ValueError(f"{value!r} is not an ISO 3166 country code (two upper-case letters)")
    if name == "card_bin" and not _BIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a card BIN prefix (1 to 8 digits)")
    if name == "amount" or (op in _ORDERED):
        amount = _decimal(value)
        if amount is None:
            raise ValueError(f"{value!r} is not a decimal number such as '100.50'")
        if name == "amount" and amount < 0:
            raise ValueError("amounts are zero or more")


def _decimal(text: str) -> Decimal | None:
    if not re.fullmatch(r"-?[0-9]{1,19}(\.[0-9]{1,8})?", text, re.ASCII):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


class Target(BaseModel):
    """One instance of a route, with its place in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance: uuid.UUID
    priority: int = Field(default=100, ge=0, le=1_000_000)
    weight: int = Field(default=1, ge=1, le=10_000)


_SEGMENT_FIELDS = ("currency", "payment_method", "billing_country", "card_brand")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    when: list[Condition] = Field(min_length=1, max_length=20)
    route: list[Target] = Field(min_length=1, max_length=50)
    # "priority": the route's priorities and weights; "success_rate": a bandit over each
    # instance's recent outcomes in the payment's segment (registry.adaptive)
    mode: Literal["priority", "success_rate"] = "priority"
    exploration: float = Field(default=0.02, ge=0, le=0.2)
    eliminate_below: float | None = Field(default=None, gt=0, lt=1)
    min_samples: int = Field(default=20, ge=1, le=100_000)
    segment_by: list[str] = Field(
        default_factory=lambda: ["currency", "payment_method"], max_length=4
    )

    @field_validator("segment_by")
    @classmethod
    def _segment(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in _SEGMENT_FIELDS and not _METADATA_KEY.fullmatch(name):
                raise ValueError(
                    f"{name!r}: segment by {', '.join(_SEGMENT_FIELDS)} or metadata.<key>"
                )
        if len(set(value)) != len(value):
            raise ValueError("a field is named twice")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("1 to 64 of a-z, 0-9, '_', '-', '.', starting with a letter or digit")
        return value


class RuleSet(BaseModel):
    """A ruleset as operators write it (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)
    # None: every instance of the scope, by its own priority and weight (routing as
    # it is without rules)
    default: list[Target] | None = Field(default=None, max_length=50)
    # A soft decline (the issuer said try again, a processing error) is charged once more
    # on the route's next instance, under a new reference (workers.payments.retries).
    retry_soft_declines: bool = False

    @model_validator(mode="after")
    def _unique(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are called {rule.name!r}")
            seen.add(rule.name)
            _unique_targets(rule.route, f"rule {rule.name!r}")
        if self.default is not None:
            _unique_targets(self.default, "the default")
        return self

    def instance_ids(self) -> set[uuid.UUID]:
        ids = {t.instance for rule in self.rules for t in rule.route}
        return ids | {t.instance for t in self.default or ()}


def _unique_targets(targets: Sequence[Target], where: str) -> None:
    ids = [t.instance for t in targets]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where} names an instance twice")


def parse_ruleset(raw: Any) -> RuleSet:
    """A RuleSet from operator input, or RulesError naming the first bad field."""
    if isinstance(raw, RuleSet):
        return raw
    if not isinstance(raw, Mapping):
        raise RulesError("ruleset", "a JSON object with 'rules' (and optionally 'default')")
    try:
        return RuleSet.model_validate(dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".")
        message = str(error["msg"]).removeprefix("Value error, ")
        raise RulesError(where or "ruleset", message) from None


# -- the facts a rule reads ------------------------------------------------------------

# What billing may say beyond the payment's own fields, for rules (request_payment).
ROUTE_FACT_FIELDS = ("billing_country", "card_brand", "card_bin")


def validated_route_facts(given: dict[str, Any]) -> dict[str, Any]:
    """billing_country (ISO 3166 alpha-2), card_brand (a word), card_bin (1 to 8 digits),
    as rules compare them; None values dropped. RulesError names the bad one."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise RulesError(name, "text")
        if name == "billing_country":
            value = value.upper()
            if len(value) != 2 or not value.isascii() or not value.isalpha():
                raise RulesError(name, "an ISO 3166 country code of two letters, as 'NG'")
        elif name == "card_brand":
            value = value.lower()
            if not 0 < len(value) <= 30 or not value.replace("_", "").isalnum():
                raise RulesError(name, "a card brand of 1 to 30 letters, as 'visa'")
        elif name == "card_bin":
            if not 0 < len(value) <= 8 or not value.isascii() or not value.isdigit():
                raise RulesError(name, "the card's BIN, 1 to 8 digits (never the full number)")
        else:
            raise RulesError(name, f"not a routing fact; one of {', '.join(ROUTE_FACT_FIELDS)}")
        out[name] = value
    return out


@dataclass(frozen=True)
class RouteFacts:
    """What routing knows of a payment. ``amount_minor`` in the currency's minor units."""

    currency: str
    amount_minor: int = 0
    payment_method: str = "card"
    billing_country: str | None = None
    card_brand: str | None = None
    card_bin: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def amount(self) -> Decimal:
        """In the currency's units, as rules state amounts."""
        return Decimal(self.amount_minor).scaleb(-CURRENCY_EXPONENTS.get(self.currency, 2))

    def get(self, name: str) -> Any:
        """The fact a condition reads, as the rule compares it (None: not given)."""
        if name.startswith("metadata."):
            return _metadata_fact(self.metadata.get(name[9:]))
        return getattr(self, name)

    def values(self) -> dict[str, Any]:
        """Every fact by the name conditions use, built once per route: a rule then reads
        each with one dict lookup (twenty rules in a few microseconds)."""
        values: dict[str, Any] = {
            "currency": self.currency,
            "amount": self.amount,
            "payment_method": self.payment_method,
            "billing_country": self.billing_country,
            "card_brand": self.card_brand,
            "card_bin": self.card_bin,
        }
        for key, value in self.metadata.items():
            values["metadata." + key] = _metadata_fact(value)
        return values


def _metadata_fact(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


# -- compiled ----------------------------------------------------------------------------

Test = Callable[[Any], bool]


def _numeric(compare: Callable[[Any, Any], bool], bound: Decimal) -> Test:
    def test(fact: Any) -> bool:
        if isinstance(fact, Decimal):
            return compare(fact, bound)
        number = _decimal(fact)
        return number is not None and compare(number, bound)

    return test


def _compile_condition(condition: Condition) -> Test:
    op, value = condition.op, condition.value
    numeric = condition.field == "amount" or (
        op in _ORDERED and condition.field.startswith("metadata.")
    )
    if numeric:
        # amounts compare as numbers: "100" = "100.00"
        compare: dict[str, Callable[[Any, Any], bool]] = {
            "=": operator.eq,
            "!=": operator.ne,
            "<": operator.lt,
            "<=": operator.le,
            ">": operator.gt,
            ">=": operator.ge,
        }
        if op in _LISTS:
            members = {Decimal(v) for v in value}
            inside = _members_numeric(members)
            return inside if op == "in" else (lambda fact: not inside(fact))
        return _numeric(compare[op], Decimal(str(value)))
    if op == "=":
        return lambda fact: fact == value
    if op == "!=":
        return lambda fact: fact != value
    if op == "in":
        members_text = frozenset(value)
        return lambda fact: fact in members_text
    if op == "not in":
        members_text = frozenset(value)
        return lambda fact: fact not in members_text
    prefixes = tuple(value) if isinstance(value, list) else (value,)
    return lambda fact: fact.startswith(prefixes)


def _members_numeric(members: set[Decimal]) -> Test:
    def test(fact: Any) -> bool:
        number = fact if isinstance(fact, Decimal) else _decimal(fact)
        return number is not None and number in members

    return test


@dataclass(frozen=True)
class CompiledRule:
    name: str
    conditions: tuple[tuple[str, Test], ...]
    route: tuple[Target, ...]
    adaptive: Adaptive | None = None  # success-rate mode's parameters

    def matches(self, facts: RouteFacts) -> bool:
        values = facts.values()
        for name, test in self.conditions:
            fact = values.get(name)
            if fact is None or not test(fact):
                return False
        return True


@dataclass(frozen=True)
class CompiledRuleSet:
    """An active (or tried) ruleset, ready to route with."""

    id: uuid.UUID | None
    version: int | None
    tenant_id: str | None
    rules: tuple[CompiledRule, ...]
    default: tuple[Target, ...] | None
    retry_soft_declines: bool

    def segment_fields(self) -> set[tuple[str, ...]]:
        """The segments its success-rate rules count outcomes by."""
        return {r.adaptive.segment_by for r in self.rules if r.adaptive is not None}

    def first_match(self, facts: RouteFacts) -> CompiledRule | None:
        values = facts.values()
        for rule in self.rules:  # CompiledRule.matches, inlined: this loop is the cost
            for name, test in rule.conditions:
                fact = values.get(name)
                if fact is None or not test(fact):
                    break
            else:
                return rule
        return None


# Conditions are all ANDed, so their order is free: the cheapest and usually most
# selective (an equality) runs first and a rule that does not apply is left at once.
_COST = {"=": 0, "in": 1, "prefix": 1, "!=": 2, "not in": 2, "<": 3, "<=": 3, ">": 3, ">=": 3}


def compile_ruleset(
    ruleset: RuleSet,
    *,
    id: uuid.UUID | None = None,
    version: int | None = None,
    tenant_id: str | None = None,
) -> CompiledRuleSet:
    return CompiledRuleSet(
        id=id,
        version=version,
        tenant_id=tenant_id,
        rules=tuple(
            CompiledRule(
                rule.name,
                tuple(
                    (c.field, _compile_condition(c))
                    for c in sorted(rule.when, key=lambda c: _COST[c.op])
                ),
                tuple(rule.route),
                Adaptive(
                    exploration=rule.exploration,
                    eliminate_below=rule.eliminate_below,
                    min_samples=rule.min_samples,
                    segment_by=tuple(rule.segment_by),
                )
                if rule.mode == "success_rate"
                else None,
            )
            for rule in ruleset.rules
        ),
        default=tuple(ruleset.default) if ruleset.default is not None else None,
        retry_soft_declines=ruleset.retry_soft_declines,
    )
