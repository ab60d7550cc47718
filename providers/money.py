"""Money at the edges is ``Decimal``; inside and on the wire it is integer minor units.

Conversion uses the currency's ISO 4217 exponent (NGN 2, JPY 0, KWD 3). Every
refusal is a specific :class:`MoneyError` subclass, so callers can tell a
float from a fraction of a kobo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

# ISO 4217 active codes by minor-unit exponent (currencies with no minor unit in
# practice, such as JPY, KRW and XOF, have exponent 0).
_EXPONENT_2 = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD
CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD
GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD
MDL MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR
PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWL
"""
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"

CURRENCY_EXPONENTS: dict[str, int] = {
    code: places
    for places, codes in ((2, _EXPONENT_2), (0, _EXPONENT_0), (3, _EXPONENT_3), (4, _EXPONENT_4))
    for code in codes.split()
}


class MoneyError(ValueError):
    """An amount or currency that Tender refuses to handle."""


class UnknownCurrency(MoneyError):
    """The code is not an ISO 4217 currency (or not upper-case three letters)."""


class FloatAmount(MoneyError):
    """A binary float was given; money must be Decimal, int or a decimal string."""


class NonFiniteAmount(MoneyError):
    """NaN or infinity."""


class NonPositiveAmount(MoneyError):
    """Zero or negative: a payment moves a positive amount."""


class TooManyDecimalPlaces(MoneyError):
    """More decimal places than the currency's minor unit allows (e.g. 1.001 NGN)."""


class AmountTooLarge(MoneyError):
    """More minor units than a signed 64-bit ledger column holds."""


MAX_MINOR = 2**63 - 1


class MalformedAmount(MoneyError):
    """Not a number at all (e.g. '12,50' or 'ten')."""


_AMOUNT_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def normalize_currency(code: str) -> str:
    """Return the ISO 4217 code, or raise UnknownCurrency."""
    if not isinstance(code, str) or code not in CURRENCY_EXPONENTS:
        raise UnknownCurrency(f"unknown currency {code!r}: expected an ISO 4217 code such as 'NGN'")
    return code


def exponent(currency: str) -> int:
    """The number of decimal places of the currency's minor unit."""
    return CURRENCY_EXPONENTS[normalize_currency(currency)]


def _as_decimal(amount: object) -> Decimal:
    if isinstance(amount, bool):
        raise MalformedAmount(f"amount must be a number, not {amount!r}")
    if isinstance(amount, float):
        raise FloatAmount(
            f"amount {amount!r} is a float; pass a Decimal or a string such as '{amount}'"
        )
    if isinstance(amount, Decimal):
        return amount
    if isinstance(amount, int):
        return Decimal(amount)
    if isinstance(amount, str):
        # Text is ASCII digits with at most one point, nothing else: Decimal() alone would
        # also take ' 5 ', '5_000', '1e3', 'inf' and non-ASCII digits (Arabic-Indic five is 5).
        if _AMOUNT_TEXT.fullmatch(amount):
            return Decimal(amount)
        if amount.startswith("-") and _AMOUNT_TEXT.fullmatch(amount[1:]):
            raise NonPositiveAmount(f"amount {amount!r} must be greater than zero")
        raise MalformedAmount(
            f"amount {amount[:40]!r} is not a decimal number: use digits and at most one "
            "point, such as '1500.50'"
        )
    raise MalformedAmount(
        f"amount must be a Decimal, int or decimal string, not {type(amount).__name__}"
    )


def to_minor(amount: Decimal | int | str, currency: str) -> int:
    """Convert a major-unit amount to integer minor units, refusing anything inexact.

    >>> to_minor(Decimal("12.34"), "NGN")
    1234
    """
    places = exponent(currency)
    value = _as_decimal(amount)
    if not value.is_finite():
        raise NonFiniteAmount(f"amount {amount!r} is not a finite number")
    if value <= 0:
        raise NonPositiveAmount(f"amount {value} {currency} must be greater than zero")
    # Exact integer arithmetic on the digits: Decimal.scaleb rounds to the context's
    # 28 significant digits, which would silently drop a fraction of a minor unit.
    _sign, digits, exp = value.as_tuple()
    assert isinstance(exp, int)  # finite
    coefficient = int("".join(map(str, digits)))
    shift = exp + places
    if shift < 0:
        minor, fraction = divmod(coefficient, 10**-shift) if -shift < len(digits) else (0, 1)
        if fraction:
            raise TooManyDecimalPlaces(
                f"amount {value} has more than {places} decimal place(s), the most {currency} allows"
            )
    elif value.adjusted() + places > len(str(MAX_MINOR)):
        minor = MAX_MINOR + 1  # far too large; do not build a huge integer
    else:
        minor = coefficient * 10**shift
    if minor > MAX_MINOR:
        raise AmountTooLarge(f"amount {value} {currency} is larger than Tender can store")
    return minor


def from_minor(amount_minor: int, currency: str) -> Decimal:
    """Convert integer minor units back to a Decimal with the currency's exponent.

    >>> from_minor(1234, "NGN")
    Decimal('12.34')
    """
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise MalformedAmount(f"minor units must be an int, not {type(amount_minor).__name__}")
    places = exponent(currency)
    if abs(amount_minor) > MAX_MINOR:
        raise AmountTooLarge(f"{amount_minor} minor units is more than Tender can store")
    return Decimal(amount_minor).scaleb(-places).quantize(Decimal(1).scaleb(-places))


def format_amount(amount_minor: int, currency: str) -> str:
    """Human form for logs and tables: '12.34 NGN'."""
    return f"{from_minor(amount_minor, currency)} {currency}"


# --- a provider's own units -----------------------------------------------------------


class NotRepresentable(MoneyError):
    """The provider cannot carry this amount exactly in its units; nothing is sent."""


@dataclass(frozen=True)
class Unit:
    """How a provider writes amounts of one currency: integers with ``exponent`` decimal
    places (its "subunit"), and ``source``, where the provider says so."""

    exponent: int
    source: str
    step: int = 1  # the provider's amount must be a multiple of this (Stripe: KWD in 10s)
    maximum: int | None = None  # the largest amount the provider takes, in its own unit


class ProviderUnits:
    """Every currency a provider accepts, and its unit there. Amounts go out and come back
    through this one table; anything the provider cannot carry exactly is refused before
    sending, and an amount that comes back inexact is unreadable, never rounded."""

    def __init__(self, provider: str, units: Mapping[str, Unit]) -> None:
        for code in units:
            normalize_currency(code)
        self.provider = provider
        self.units = dict(units)

    @property
    def currencies(self) -> frozenset[str]:
        return frozenset(self.units)

    def _shift(self, currency: str) -> int:
        unit = self.units.get(currency)
        if unit is None:
            raise UnknownCurrency(f"{self.provider} does not take {currency}")
        return unit.exponent - exponent(currency)

    def to_provider(self, amount_minor: int, currency: str) -> int:
        """ISO minor units as the provider's integer amount."""
        shift = self._shift(currency)
        if shift >= 0:
            whole, rest = amount_minor * 10**shift, 0
        else:
            whole, rest = divmod(amount_minor, 10**-shift)
        step = self.units[currency].step
        maximum = self.units[currency].maximum
        if maximum is not None and whole > maximum:
            raise NotRepresentable(
                f"{self.provider} takes at most {maximum} ({currency} in its unit) in one "
                f"charge; {amount_minor} minor units is more"
            )
        if rest or whole % step:
            step_minor = step * 10**-shift if shift < 0 else step // 10**shift or 1
            raise NotRepresentable(
                f"{self.provider} takes {currency} in steps of "
                f"{from_minor(step_minor, currency)} only; {amount_minor} minor units cannot "
                "be charged exactly"
            )
        return whole

    def to_decimal(self, amount_minor: int, currency: str) -> Decimal:
        """The amount as the decimal number a provider that writes major units expects, with
        exactly its number of decimal places for the currency."""
        places = self.units[currency].exponent if currency in self.units else 0
        return Decimal(self.to_provider(amount_minor, currency)).scaleb(-places)

    def from_decimal(self, value: Decimal | str, currency: str) -> int:
        """A provider's decimal amount as ISO minor units (MoneyError if inexact)."""
        unit = self.units.get(currency)
        if unit is None:
            raise UnknownCurrency(f"{self.provider} does not take {currency}")
        subunits = Decimal(value).scaleb(unit.exponent)
        if not subunits.is_finite() or subunits != subunits.to_integral_value():
            raise NotRepresentable(f"{self.provider} amount {value} {currency} is not exact")
        return self.from_provider(int(subunits), currency)

    def from_provider(self, amount: int, currency: str) -> int:
        """The provider's integer amount as ISO minor units (MoneyError if inexact)."""
        shift = self._shift(currency)
        if shift <= 0:
            return amount * 10**-shift
        whole, rest = divmod(amount, 10**shift)
        if rest:
            raise NotRepresentable(
                f"{self.provider} reported {amount} {currency} subunits, not a whole "
                f"number of {currency} minor units"
            )
        return whole
