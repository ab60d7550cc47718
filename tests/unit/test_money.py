"""Money: Decimal at the edges, integer minor units inside, by ISO 4217 exponent."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR,
    AmountTooLarge,
    FloatAmount,
    MalformedAmount,
    MoneyError,
    NonFiniteAmount,
    NonPositiveAmount,
    TooManyDecimalPlaces,
    UnknownCurrency,
    exponent,
    format_amount,
    from_minor,
    normalize_currency,
    to_minor,
)

CURRENCIES = sorted(CURRENCY_EXPONENTS)
currencies = st.sampled_from(CURRENCIES)
minor_units = st.integers(min_value=1, max_value=MAX_MINOR)


@pytest.mark.parametrize(("currency", "places"), [("NGN", 2), ("USD", 2), ("JPY", 0), ("KWD", 3)])
def test_exponent_follows_iso_4217(currency: str, places: int) -> None:
    assert exponent(currency) == places


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("12.34"), "NGN", 1234),
        ("12.34", "NGN", 1234),
        ("12.30", "NGN", 1230),
        (12, "NGN", 1200),
        (Decimal("500"), "JPY", 500),
        (Decimal("1.000"), "JPY", 1),
        (Decimal("1.234"), "KWD", 1234),
        (Decimal("0.001"), "KWD", 1),
        (Decimal("0.01"), "NGN", 1),
    ],
)
def test_to_minor_scales_by_the_currency_exponent(
    amount: Decimal | int | str, currency: str, minor: int
) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [(1234, "NGN", "12.34"), (1200, "NGN", "12.00"), (500, "JPY", "500"), (5, "KWD", "0.005")],
)
def test_from_minor_keeps_the_currency_exponent(minor: int, currency: str, text: str) -> None:
    amount = from_minor(minor, currency)
    assert isinstance(amount, Decimal)
    assert str(amount) == text


def test_format_amount_for_humans() -> None:
    assert format_amount(1234, "NGN") == "12.34 NGN"
    assert format_amount(7, "JPY") == "7 JPY"


@pytest.mark.parametrize("amount", [12.34, 1.0, 0.1])
def test_floats_are_refused(amount: float) -> None:
    with pytest.raises(FloatAmount):
        to_minor(amount, "NGN")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "amount",
    [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity")],
)
def test_nan_and_infinity_are_refused(amount: Decimal | str) -> None:
    with pytest.raises(NonFiniteAmount):
        to_minor(amount, "NGN")


@pytest.mark.parametrize("amount", [0, Decimal("0.00"), Decimal("-0"), -1, Decimal("-0.01"), "-5"])
def test_zero_and_negative_amounts_are_refused(amount: Decimal | int | str) -> None:
    with pytest.raises(NonPositiveAmount):
        to_minor(amount, "NGN")


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("1.001", "NGN"),
        ("1.5", "JPY"),
        ("0.0001", "KWD"),
        ("0.0010", "NGN"),
        # More significant digits than Decimal's default context keeps (28): must
        # not be rounded away into an acceptable amount.
        ("0.1000000000000000000000000000001", "NGN"),
        (Decimal("1E-30"), "NGN"),
    ],
)
def test_more_decimal_places_than_the_currency_allows_are_refused(
    amount: str, currency: str
) -> None:
    with pytest.raises(TooManyDecimalPlaces):
        to_minor(amount, currency)


@pytest.mark.parametrize("code", ["XXX", "ngn", "NG", "NGNN", "", "naira", None, 566])
def test_unknown_currency_codes_are_refused(code: object) -> None:
    with pytest.raises(UnknownCurrency):
        to_minor(Decimal("1"), code)  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrency):
        normalize_currency(code)  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrency):
        from_minor(100, code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "amount",
    [
        *("12,50", "ten", "", True, [1], object(), "NaN", "inf", "1E-30", "1e3"),
        *(" 5 ", "5 ", "\t5", "5_000", "+5", ".5", "5.", "5..0", "5.0.0", "5\x00"),
        *("\u0665", "\uff15"),  # Arabic-Indic and full-width digit five
    ],
)
def test_malformed_amounts_are_refused(amount: object) -> None:
    with pytest.raises(MalformedAmount):
        to_minor(amount, "NGN")  # type: ignore[arg-type]


@given(st.text(max_size=12))
def test_amount_text_is_ascii_digits_with_at_most_one_point(text: str) -> None:
    """Any text either is digits[.digits] and converts exactly, or is refused as malformed
    (or, for '-' and such digits, as not positive): nothing in between is guessed."""
    grammar = re.fullmatch(r"[0-9]+(\.[0-9]+)?", text, re.ASCII)
    try:
        minor = to_minor(text, "KWD")
    except (MalformedAmount, NonPositiveAmount, TooManyDecimalPlaces, AmountTooLarge) as exc:
        if grammar:
            assert not isinstance(exc, MalformedAmount)
        else:
            assert isinstance(exc, MalformedAmount | NonPositiveAmount)
        return
    assert grammar
    assert minor == int(Decimal(text) * 1000)


@pytest.mark.parametrize("minor", [1.5, "100", True, Decimal("100")])
def test_from_minor_refuses_anything_but_int(minor: object) -> None:
    with pytest.raises(MalformedAmount):
        from_minor(minor, "NGN")  # type: ignore[arg-type]


def test_amounts_beyond_the_ledger_column_are_refused() -> None:
    assert to_minor(MAX_MINOR, "JPY") == MAX_MINOR
    with pytest.raises(AmountTooLarge):
        to_minor(MAX_MINOR + 1, "JPY")
    with pytest.raises(AmountTooLarge):
        to_minor(Decimal("1E+999999999"), "NGN")
    with pytest.raises(AmountTooLarge):
        to_minor("9" * 40, "NGN")
    with pytest.raises(AmountTooLarge):
        from_minor(10**30, "NGN")


def test_every_refusal_is_a_money_error_and_a_value_error() -> None:
    for error in (
        UnknownCurrency,
        FloatAmount,
        NonFiniteAmount,
        NonPositiveAmount,
        TooManyDecimalPlaces,
        AmountTooLarge,
        MalformedAmount,
    ):
        assert issubclass(error, MoneyError)
        assert issubclass(error, ValueError)


# -- properties ----------------------------------------------------------------------


@st.composite
def valid_amounts(draw: st.DrawFn) -> tuple[Decimal, str]:
    currency = draw(currencies)
    places = CURRENCY_EXPONENTS[currency]
    amount = draw(
        st.decimals(
            min_value=Decimal(1).scaleb(-places),
            max_value=Decimal(MAX_MINOR).scaleb(-places),
            places=places,
            allow_nan=False,
            allow_infinity=False,
        )
    )
    return amount, currency


@settings(deadline=None, max_examples=300)
@given(valid_amounts())
def test_round_trip_from_major_units(case: tuple[Decimal, str]) -> None:
    amount, currency = case
    minor = to_minor(amount, currency)
    assert isinstance(minor, int)
    assert from_minor(minor, currency) == amount
    assert to_minor(str(amount), currency) == minor


@settings(deadline=None, max_examples=300)
@given(minor_units, currencies)
def test_round_trip_from_minor_units(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


@settings(deadline=None)
@given(st.floats(), currencies)
def test_property_every_float_is_refused(amount: float, currency: str) -> None:
    with pytest.raises(FloatAmount):
        to_minor(amount, currency)  # type: ignore[arg-type]


@settings(deadline=None)
@given(
    st.sampled_from(["NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-inf"]),
    st.booleans(),
    currencies,
)
def test_property_non_finite_is_refused(text: str, as_decimal: bool, currency: str) -> None:
    # As a Decimal it is not finite; as text it is not an amount at all.
    with pytest.raises(NonFiniteAmount if as_decimal else MalformedAmount):
        to_minor(Decimal(text) if as_decimal else text, currency)


@settings(deadline=None)
@given(
    st.decimals(max_value=0, allow_nan=False, allow_infinity=False)
    | st.integers(max_value=0).map(Decimal),
    currencies,
)
def test_property_zero_or_negative_is_refused(amount: Decimal, currency: str) -> None:
    with pytest.raises(NonPositiveAmount):
        to_minor(amount, currency)


@settings(deadline=None, max_examples=300)
@given(
    st.integers(min_value=0, max_value=MAX_MINOR - 1),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=9),
    currencies,
)
def test_property_a_fraction_of_a_minor_unit_is_refused(
    minor: int, extra_places: int, digit: int, currency: str
) -> None:
    places = CURRENCY_EXPONENTS[currency]
    # Built from digits: Decimal addition would itself round at 28 significant digits.
    coefficient = minor * 10**extra_places + digit
    amount = Decimal((0, tuple(int(d) for d in str(coefficient)), -(places + extra_places)))
    with pytest.raises(TooManyDecimalPlaces):
        to_minor(amount, currency)


@settings(deadline=None)
@given(st.text(max_size=5).filter(lambda code: code not in CURRENCY_EXPONENTS))
def test_property_unknown_currency_is_refused(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        to_minor(Decimal("1"), code)
