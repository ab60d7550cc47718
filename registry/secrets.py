"""Secret config fields: encrypted at rest, or referenced (``env:NAME``, ``vault:path#key``).

Which fields are secret comes from the plugin's config model (``SecretStr``
annotations), never from a list of names. Stored form of a secret field:

* ``{"$enc": "<fernet token>"}``: a value the operator gave, encrypted with the
  Fernet key from ``TENDER_SECRETS_KEY`` (development: a key file in the data dir);
* ``"env:NAME"`` / ``"vault:path#key"``: a reference, resolved when the plugin is
  configured, so the secret itself never enters the database.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from config.settings import Environment, Settings, get_settings
from providers.base import PaymentProvider, ProviderConfig
from providers.errors import ConfigurationError
from providers.redaction import redact, sanitize
from registry.vault import VaultResolver

__all__ = ["redact", "sanitize", "secret_values"]  # text from providers: providers.redaction

ENCRYPTED = "$enc"
MASK = "********"
REFERENCE_PREFIXES = ("env:", "vault:")


class SecretBox:
    """Encrypts secret config values with the first of its Fernet keys and decrypts with
    any of them, so a key can be rotated: put the new key first, keep the old ones after
    it (``TENDER_SECRETS_KEY=new,old``), run ``tender secrets rotate``, then drop the old."""

    def __init__(self, key: bytes, *older: bytes) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in (key, *older)])

    def __repr__(self) -> str:
        return "<SecretBox>"

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.secrets_key is not None:
            keys = [k.strip().encode() for k in settings.secrets_key.get_secret_value().split(",")]
            try:
                return cls(*keys)
            except ValueError:
                raise ConfigurationError(
                    "TENDER_SECRETS_KEY: expected a Fernet key (32 url-safe base64 bytes); "
                    "several are separated by commas, the newest first"
                ) from None
        if settings.env is Environment.PRODUCTION:
            raise ConfigurationError("TENDER_SECRETS_KEY must be set when TENDER_ENV=production")
        key_file = settings.data_dir / "secrets.key"
        return cls(_read_or_create_key(key_file))

    def encrypt(self, value: str) -> dict[str, str]:
        return {ENCRYPTED: self._fernet.encrypt(value.encode()).decode()}

    def rotate(self, stored: Mapping[str, str]) -> dict[str, str]:
        """The same secret, encrypted again with the newest key."""
        try:
            return {ENCRYPTED: self._fernet.rotate(stored[ENCRYPTED].encode()).decode()}
        except (InvalidToken, KeyError):
            raise ConfigurationError(
                "a stored secret cannot be decrypted with any key in TENDER_SECRETS_KEY"
            ) from None

    def rotate_text(self, token: str) -> str:
        """A bare Fernet token (an encrypted payment token) with the newest key."""
        return self.rotate({ENCRYPTED: token})[ENCRYPTED]

    def decrypt(self, stored: Mapping[str, str]) -> str:
        try:
            return self._fernet.decrypt(stored[ENCRYPTED].encode()).decode()
        except (InvalidToken, KeyError):
            raise ConfigurationError(
                "a stored secret cannot be decrypted: TENDER_SECRETS_KEY differs from the one it was saved with"
            ) from None


def _read_or_create_key(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(REFERENCE_PREFIXES)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def env_name_allowed(name: str, settings: Settings | None = None) -> bool:
    """Whether an ``env:`` reference may name ``name`` (see
    ``Settings.secret_env_prefixes``): never one of Tender's own settings unless it is a
    ``TENDER_SECRET_`` one, and only the operator's prefixes when they are set."""
    if not _ENV_NAME.fullmatch(name):
        return False
    prefixes = (settings or get_settings()).secret_env_prefixes
    if prefixes:
        return name.startswith(tuple(prefixes))
    return not name.upper().startswith("TENDER_") or name.upper().startswith("TENDER_SECRET_")


def resolve_reference(field: str, reference: str, vault: VaultResolver | None = None) -> str:
    """The secret a reference points at; ConfigurationError names the field, not the value."""
    if reference.startswith("env:"):
        name = reference.removeprefix("env:")
        if not env_name_allowed(name):
            raise ConfigurationError(
                f"config.{field}: env:{name[:60]} is not an environment variable secrets may "
                "come from (Tender's own TENDER_ settings never are; "
                "TENDER_SECRET_ENV_PREFIXES lists the allowed prefixes)"
            )
        value = os.environ.get(name)
        if not value:
            raise ConfigurationError(f"config.{field}: environment variable {name} is not set")
        return value
    if vault is None:
        raise ConfigurationError(f"config.{field}: vault references need TENDER_VAULT_ADDR")
    return vault.read(field, reference)


def _secret_text(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def seal(model: type[ProviderConfig], raw: Mapping[str, Any], box: SecretBox) -> dict[str, Any]:
    """The storable form of a raw config: secrets encrypted, references kept as given.

    ``raw`` must already have passed validation (see :func:`resolve`).
    """
    secret = model.secret_fields()
    stored: dict[str, Any] = {}
    for field, value in raw.items():
        value = _secret_text(value)
        if field in secret and value is not None and not is_reference(value):
            if isinstance(value, Mapping) and ENCRYPTED in value:
                stored[field] = dict(value)  # already sealed (kept from the previous config)
            else:
                stored[field] = box.encrypt(str(value))
        else:
            stored[field] = value
    return stored


def resolve(
    model: type[ProviderConfig],
    stored: Mapping[str, Any],
    box: SecretBox,
    vault: VaultResolver | None = None,
) -> dict[str, Any]:
    """Plain values for the plugin: decrypt sealed secrets and resolve references."""
    secret = model.secret_fields()
    plain: dict[str, Any] = {}
    for field, value in stored.items():
        value = _secret_text(value)
        if field in secret and isinstance(value, Mapping) and ENCRYPTED in value:
            plain[field] = box.decrypt(value)
        elif field in secret and is_reference(value):
            plain[field] = resolve_reference(field, value, vault)
        else:
            plain[field] = value
    return plain


def mask(model: type[ProviderConfig] | None, stored: Mapping[str, Any]) -> dict[str, Any]:
    """A config safe to show: secrets masked, references shown (they are not secret)."""
    secret = model.secret_fields() if model is not None else frozenset()
    shown: dict[str, Any] = {}
    for field, value in stored.items():
        if (isinstance(value, Mapping) and ENCRYPTED in value) or (
            field in secret and not is_reference(value) and value is not None
        ):
            shown[field] = MASK
        else:
            shown[field] = value
    return shown


def hint(secret: str) -> str:
    """A secret as a person may see it, to tell keys apart: its kind prefix and last four
    characters for a long key (``sk_live_••••1234``), nothing of a short one."""
    if len(secret) < 16:
        return "••••••••"
    kind = re.match(r"[A-Za-z]{2,10}_(?:test_|live_)?", secret)
    return f"{kind.group(0) if kind else ''}••••{secret[-4:]}"


def secret_values(plugin: PaymentProvider | None) -> list[str]:
    """The secret config values of a configured plugin, for :func:`redact`."""
    return plugin.secret_values() if plugin is not None else []
