"""``vault:<mount>/<path>#<field>`` references, read from a KV v2 engine through ``hvac``.

Keys can stay in Vault (or OpenBao): the registry stores only the reference, and each
process reads the value when it configures the plugin. Settings: ``TENDER_VAULT_ADDR``,
and either ``TENDER_VAULT_TOKEN`` or AppRole (``TENDER_VAULT_ROLE_ID`` with
``TENDER_VAULT_SECRET_ID``); ``TENDER_VAULT_NAMESPACE`` optional.

* Values are cached per process for ``TENDER_VAULT_CACHE_S``; the registry rebuilds a
  plugin whose references are older than that, so a new secret version is picked up.
* A 403 (a revoked or expired token) logs in again once (AppRole) and retries; a renewable
  token is renewed when it is close to expiry.
* A reference that does not exist is the operator's to fix: :class:`ConfigurationError`
  naming the field and the reference (the instance goes ``error``). Vault unreachable is
  an outage: :class:`SecretUnavailable` (the instance is unhealthy and payments route
  around it until Vault answers). Neither ever carries a value.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import hvac
import hvac.exceptions
import requests

from config.settings import Settings
from providers.errors import ConfigurationError, ProviderUnavailable

PREFIX = "vault:"


class SecretUnavailable(ProviderUnavailable):
    """Vault could not be asked (unreachable, sealed): not the config's fault, and nothing
    was sent to the provider."""


def parse_reference(reference: str) -> tuple[str, str, str]:
    """``vault:secret/tender/paystack#secret_key`` -> (mount, path, key)."""
    body = reference.removeprefix(PREFIX)
    location, _, key = body.partition("#")
    mount, _, path = location.partition("/")
    if not (mount and path and key):
        raise ConfigurationError(
            f"{reference!r} is not a vault reference: expected vault:<mount>/<path>#<field>"
        )
    return mount, path, key


class VaultResolver:
    """Reads references for this process (one hvac client, a small cache)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.vault_addr:
            raise ConfigurationError("vault references need TENDER_VAULT_ADDR")
        self.settings = settings
        self._client = hvac.Client(
            url=settings.vault_addr,
            namespace=settings.vault_namespace,
            timeout=settings.vault_timeout_s,
        )
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str]] = {}  # reference -> (read at, value)
        self._logged_in = False

    def __repr__(self) -> str:
        return f"<VaultResolver {self.settings.vault_addr}>"

    def read(self, field: str, reference: str) -> str:
        mount, path, key = parse_reference(reference)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(reference)
            if cached is not None and now - cached[0] < self.settings.vault_cache_s:
                return cached[1]
            data = self._read_secret(field, reference, mount, path)
            if key not in data:
                raise ConfigurationError(
                    f"config.{field}: {reference} has no field {key!r} in Vault"
                )
            value = str(data[key])
            self._cache[reference] = (now, value)
            return value

    def _read_secret(self, field: str, reference: str, mount: str, path: str) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                self._login()
                answer = self._client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True
                )
                return dict(answer["data"]["data"])
            except hvac.exceptions.InvalidPath:
                raise ConfigurationError(
                    f"config.{field}: {reference} does not exist in Vault"
                ) from None
            except hvac.exceptions.Forbidden:
                if attempt == 2 or not self._can_log_in():
                    raise ConfigurationError(
                        f"config.{field}: Vault refused to read {reference} (403): check the "
                        "token or AppRole policy (TENDER_VAULT_*)"
                    ) from None
                self._logged_in = False  # a revoked or expired token: log in again once
            except (requests.RequestException, hvac.exceptions.VaultDown) as exc:
                raise SecretUnavailable(
                    f"config.{field}: Vault at {self.settings.vault_addr} did not answer for "
                    f"{reference} ({type(exc).__name__})"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _can_log_in(self) -> bool:
        return bool(self.settings.vault_role_id and self.settings.vault_secret_id)

    def _login(self) -> None:
        if self._logged_in:
            self._renew_if_due()
            return
        settings = self.settings
        if self._can_log_in():
            assert settings.vault_secret_id is not None
            self._client.auth.approle.login(
                role_id=settings.vault_role_id,
                secret_id=settings.vault_secret_id.get_secret_value(),
            )
        elif settings.vault_token is not None:
            self._client.token = settings.vault_token.get_secret_value()
        else:
            raise ConfigurationError(
                "vault references need TENDER_VAULT_TOKEN, or TENDER_VAULT_ROLE_ID with "
                "TENDER_VAULT_SECRET_ID"
            )
        self._logged_in = True
        self._renew_at = self._renewal_time()

    def _renewal_time(self) -> float:
        try:
            info = self._client.auth.token.lookup_self()["data"]
        except Exception:  # a root or non-inspectable token: nothing to renew
            return float("inf")
        ttl = int(info.get("ttl") or 0)
        if not ttl or not info.get("renewable"):
            return float("inf")
        return time.monotonic() + ttl * 0.66

    def _renew_if_due(self) -> None:
        if time.monotonic() < getattr(self, "_renew_at", float("inf")):
            return
        try:
            self._client.auth.token.renew_self()
            self._renew_at = self._renewal_time()
        except Exception:  # not renewable any more: log in again on the next read
            self._logged_in = False
