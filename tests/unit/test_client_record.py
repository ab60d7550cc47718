"""``record_payment`` builds the payment record from what it inserted (no RETURNING):
it must be exactly what the database then holds."""

from __future__ import annotations

from decimal import Decimal

from cryptography.fernet import Fernet

from registry.db import Database, get_database
from registry.secrets import SecretBox
from workers.ledger.records import read_payment
from workers.payments.client import _validated, record_payment


def check_recorded_payment_is_what_is_stored(database: Database) -> None:
    fields = _validated(
        "order-rec",
        Decimal("1234.50"),
        "NGN",
        "ada@example.com",
        "bank_transfer",
        {"cart": 12, "note": "ünïcode", "gift": True, "ref": None},
        "tenant-rec",
        None,
    )
    box = SecretBox(Fernet.generate_key())
    recorded, created = record_payment(database, fields, payment_token="tok_saved", box=box)
    assert created
    with database.statement() as connection:
        stored = read_payment(connection, recorded.id)
    assert stored == recorded
    assert recorded.payment_token is not None and "tok_saved" not in recorded.payment_token
    # The idempotent path reads the stored row: the same record again.
    again, created_again = record_payment(database, fields, payment_token="tok_saved", box=box)
    assert not created_again and again == recorded


def test_recorded_payment_is_what_is_stored(sqlite_url: str) -> None:
    check_recorded_payment_is_what_is_stored(get_database())
