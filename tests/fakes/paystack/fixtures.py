"""The ``fake_paystack`` pytest fixture. Import it into a test module::

from tests.fakes.paystack.fixtures import fake_paystack  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.paystack.server import FakePaystack


@pytest.fixture
def fake_paystack() -> Iterator[FakePaystack]:
    """A running fake Paystack on 127.0.0.1 with a fresh secret key; stopped afterwards."""
    with FakePaystack() as fake:
        yield fake
