"""Re-encrypting every stored secret with the newest at-rest key (``tender secrets rotate``).

Secret config fields of provider instances and customers' saved payment tokens are Fernet
tokens. With the new key first in ``TENDER_SECRETS_KEY`` and the old ones after it, this
re-encrypts all of them with the new key in one transaction: all or nothing, so a secret
the keys cannot open stops the rotation with the ledger as it was. Afterwards the old keys
can be dropped from the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select, update

from registry import audit
from registry.db import Database
from registry.models import PluginInstance
from registry.secrets import ENCRYPTED, SecretBox
from workers.ledger.records import Payment, PaymentMethodRow


@dataclass(frozen=True)
class Rotation:
    instances: int  # provider instances with at least one stored secret
    fields: int  # secret config fields re-encrypted
    payment_tokens: int  # saved payment tokens (payments' and saved methods') re-encrypted


def rotate_stored_secrets(database: Database, box: SecretBox, *, actor: str = "code") -> Rotation:
    instances = fields = tokens = 0
    with database.transaction() as session:
        for row in session.execute(select(PluginInstance)).scalars():
            rotated = {
                field: box.rotate(value)
                for field, value in row.config.items()
                if isinstance(value, Mapping) and ENCRYPTED in value
            }
            if rotated:
                row.config = {**row.config, **rotated}
                instances += 1
                fields += len(rotated)
        saved = session.execute(
            select(Payment.id, Payment.payment_token).where(Payment.payment_token.is_not(None))
        ).all()
        for payment_id, token in saved:
            assert token is not None  # selected so
            session.execute(
                update(Payment)
                .where(Payment.id == payment_id)
                .values(payment_token=box.rotate_text(token))
            )
            tokens += 1
        for method in session.execute(select(PaymentMethodRow)).scalars():
            method.token = box.rotate_text(method.token)  # saved methods' tokens too
            tokens += 1
        counts = {"instances": instances, "fields": fields, "payment_tokens": tokens}
        audit.record(session, actor, "secrets.rotate", "TENDER_SECRETS_KEY", None, counts)
    return Rotation(instances, fields, tokens)
