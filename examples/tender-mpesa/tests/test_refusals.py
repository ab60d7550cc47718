"""Who a refusal before any prompt belongs to: the merchant's own settings are a
configuration error (the instance goes to ``error``, the payment may go elsewhere), never a
decline charged to the customer's account of events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.errors import ConfigurationError, ProviderUnavailable
from tender_kit.contract import run
from tests.test_conformance import MpesaHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[MpesaHarness]:
    built = MpesaHarness(tmp_path)
    yield built
    built.close()


def test_a_wrong_passkey_is_the_merchants_configuration_not_a_decline(harness) -> None:
    request = harness.request("succeed")
    with pytest.raises(ConfigurationError, match="settings") as refused:
        run(harness.plugin(passkey="0" * 64).process_payment(request))
    assert "0" * 64 not in str(refused.value)  # the passkey is never shown
    assert harness.fake.prompts_for(harness.accounts[request.reference]) == []


def test_no_phone_number_is_refused_before_sending_and_may_go_elsewhere(harness) -> None:
    request = harness.new_request(metadata={})
    with pytest.raises(ProviderUnavailable, match="phone_number"):
        run(harness.plugin().process_payment(request))
    assert harness.fake.requests == []
