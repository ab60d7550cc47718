"""Each provider's own units (issue 34, item 4): for every currency a plugin accepts, an
amount survives the trip to the provider's units and back exactly, or is refused before
sending."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.flutterwave import FLUTTERWAVE_UNITS, FlutterwaveProvider
from providers.money import MAX_MINOR, NotRepresentable, ProviderUnits, Unit
from providers.paypal import PAYPAL_UNITS, PayPalProvider
from providers.paystack import PAYSTACK_UNITS, PaystackProvider
from providers.stripe import STRIPE_UNITS, StripeProvider

TABLES = [PAYSTACK_UNITS, STRIPE_UNITS, PAYPAL_UNITS, FLUTTERWAVE_UNITS]
PLUGINS = [
    (PaystackProvider, PAYSTACK_UNITS),
    (StripeProvider, STRIPE_UNITS),
    (PayPalProvider, PAYPAL_UNITS),
    (FlutterwaveProvider, FLUTTERWAVE_UNITS),
]


@pytest.mark.parametrize("units", TABLES, ids=lambda u: u.provider)
@given(data=st.data())
def test_every_amount_round_trips_exactly_or_is_refused(
    units: ProviderUnits, data: st.DataObject
) -> None:
    currency = data.draw(st.sampled_from(sorted(units.currencies)))
    minor = data.draw(st.integers(min_value=1, max_value=MAX_MINOR // 10_000))
    try:
        out = units.to_provider(minor, currency)
    except NotRepresentable:
        return  # refused before sending: never rounded
    assert isinstance(out, int) and units.from_provider(out, currency) == minor
    # providers that write decimal major units (PayPal, Flutterwave) go the same way
    assert units.from_decimal(str(units.to_decimal(minor, currency)), currency) == minor


@pytest.mark.parametrize(("plugin", "units"), PLUGINS, ids=lambda p: getattr(p, "name", ""))
def test_the_table_covers_exactly_the_currencies_the_plugin_accepts(
    plugin: type, units: ProviderUnits
) -> None:
    assert units.currencies == plugin.supported_currencies


@pytest.mark.parametrize("units", TABLES, ids=lambda u: u.provider)
def test_every_unit_names_its_source(units: ProviderUnits) -> None:
    assert units.units and all(unit.source for unit in units.units.values())


def test_a_coarser_unit_refuses_what_it_cannot_carry_and_reads_back_only_whole_units() -> None:
    # e.g. a provider taking KWD (ISO: 3 decimals) in hundredths only
    units = ProviderUnits("coarse", {"KWD": Unit(2, "https://example.com")})
    assert units.to_provider(1230, "KWD") == 123
    with pytest.raises(NotRepresentable):
        units.to_provider(1234, "KWD")
    assert units.from_provider(123, "KWD") == 1230
    paystack = PAYSTACK_UNITS
    with pytest.raises(NotRepresentable):  # 150 subunits of XOF is no whole franc
        paystack.from_provider(150, "XOF")
