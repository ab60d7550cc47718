"""A local fake of Paystack's HTTP API; see :mod:`tests.fakes.paystack.server`."""

from tests.fakes.paystack.server import (
    DECLINED_AUTHORIZATION,
    GOOD_AUTHORIZATION,
    FakePaystack,
    Fault,
    sign,
    unused_local_url,
)

__all__ = [
    "DECLINED_AUTHORIZATION",
    "GOOD_AUTHORIZATION",
    "FakePaystack",
    "Fault",
    "sign",
    "unused_local_url",
]
