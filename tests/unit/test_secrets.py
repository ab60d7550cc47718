"""Secret config fields: encrypted at rest or referenced, masked when shown, never echoed."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from config.settings import Settings, load_settings
from providers.base import ProviderConfig
from providers.errors import ConfigurationError
from registry import secrets
from registry.secrets import ENCRYPTED, MASK, SecretBox

SECRET = "sk_live_secret_value_4242"


class AcmeConfig(ProviderConfig):
    secret_key: SecretStr
    webhook_secret: SecretStr | None = None
    public_key: str = "pk_test"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


def test_seal_encrypts_secret_fields_only(box: SecretBox) -> None:
    stored = secrets.seal(
        AcmeConfig, {"secret_key": SECRET, "public_key": "pk_live_1", "webhook_secret": None}, box
    )
    assert set(stored["secret_key"]) == {ENCRYPTED}
    assert stored["public_key"] == "pk_live_1"
    assert stored["webhook_secret"] is None
    assert SECRET not in json.dumps(stored)


def test_seal_accepts_secretstr_values(box: SecretBox) -> None:
    stored = secrets.seal(AcmeConfig, {"secret_key": SecretStr(SECRET)}, box)
    assert secrets.resolve(AcmeConfig, stored, box)["secret_key"] == SECRET


def test_seal_keeps_references_and_already_sealed_values(box: SecretBox) -> None:
    sealed = box.encrypt(SECRET)
    stored = secrets.seal(
        AcmeConfig, {"secret_key": sealed, "webhook_secret": "env:ACME_WEBHOOK_SECRET"}, box
    )
    assert stored == {"secret_key": sealed, "webhook_secret": "env:ACME_WEBHOOK_SECRET"}


def test_resolve_decrypts_and_follows_env_references(
    box: SecretBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec_from_env")
    stored = secrets.seal(
        AcmeConfig,
        {"secret_key": SECRET, "webhook_secret": "env:ACME_WEBHOOK_SECRET", "public_key": "pk"},
        box,
    )
    assert secrets.resolve(AcmeConfig, stored, box) == {
        "secret_key": SECRET,
        "webhook_secret": "whsec_from_env",
        "public_key": "pk",
    }


def test_an_unset_env_reference_names_the_field_and_variable(
    box: SecretBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_MISSING", raising=False)
    with pytest.raises(ConfigurationError, match=r"config\.secret_key: .*ACME_MISSING"):
        secrets.resolve(AcmeConfig, {"secret_key": "env:ACME_MISSING"}, box)


def test_a_vault_reference_without_a_resolver_is_a_configuration_error(box: SecretBox) -> None:
    with pytest.raises(ConfigurationError, match=r"config\.secret_key: vault"):
        secrets.resolve(AcmeConfig, {"secret_key": "vault:payments/acme#secret"}, box)


def test_a_non_secret_field_that_looks_like_a_reference_is_left_alone(box: SecretBox) -> None:
    stored = {"secret_key": box.encrypt(SECRET), "public_key": "env:NOT_A_SECRET"}
    assert secrets.resolve(AcmeConfig, stored, box)["public_key"] == "env:NOT_A_SECRET"


def test_mask_hides_secrets_and_shows_references(box: SecretBox) -> None:
    stored = secrets.seal(
        AcmeConfig,
        {"secret_key": SECRET, "webhook_secret": "env:ACME_WEBHOOK_SECRET", "public_key": "pk"},
        box,
    )
    assert secrets.mask(AcmeConfig, stored) == {
        "secret_key": MASK,
        "webhook_secret": "env:ACME_WEBHOOK_SECRET",
        "public_key": "pk",
    }
    # A plaintext secret that somehow reached storage is masked too.
    assert secrets.mask(AcmeConfig, {"secret_key": SECRET})["secret_key"] == MASK
    # Without the plugin's model (plugin uninstalled), sealed values are still masked.
    assert secrets.mask(None, stored)["secret_key"] == MASK


def test_a_secret_sealed_with_another_key_fails_without_echoing_it(box: SecretBox) -> None:
    stored = secrets.seal(AcmeConfig, {"secret_key": SECRET}, SecretBox(Fernet.generate_key()))
    with pytest.raises(ConfigurationError, match="TENDER_SECRETS_KEY") as caught:
        secrets.resolve(AcmeConfig, stored, box)
    assert SECRET not in str(caught.value)
    assert stored["secret_key"][ENCRYPTED] not in str(caught.value)


def test_the_box_never_shows_its_key() -> None:
    key = Fernet.generate_key()
    assert key.decode() not in repr(SecretBox(key))


def test_box_from_settings_uses_tender_secrets_key(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv("TENDER_SECRETS_KEY", key.decode())
    sealed = SecretBox.from_settings(load_settings()).encrypt(SECRET)
    assert SecretBox(key).decrypt(sealed) == SECRET
    assert not (tender_env / "data" / "secrets.key").exists()


def test_development_generates_a_private_key_file_and_reuses_it(tender_env: Path) -> None:
    settings = load_settings()
    sealed = SecretBox.from_settings(settings).encrypt(SECRET)
    key_file = tender_env / "data" / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox.from_settings(settings).decrypt(sealed) == SECRET


def test_production_refuses_to_start_without_a_secrets_key(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_ENV", "production")
    with pytest.raises(ConfigurationError, match="TENDER_SECRETS_KEY must be set"):
        SecretBox.from_settings(load_settings())
    assert not (tender_env / "data" / "secrets.key").exists()


def test_a_malformed_secrets_key_is_named_and_not_echoed(tender_env: Path) -> None:
    bad = "not-a-fernet-key-but-a-secret"
    with pytest.raises(ConfigurationError, match="TENDER_SECRETS_KEY: expected a Fernet key") as e:
        SecretBox.from_settings(Settings(secrets_key=SecretStr(bad)))
    assert bad not in str(e.value)


def test_rotation_re_encrypts_every_stored_secret_with_the_newest_key(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key A at first; then A after a new key B; `tender secrets rotate`; then B alone
    opens every instance secret and saved payment token."""
    from typer.testing import CliRunner

    from config.settings import reset_settings
    from registry.db import get_database
    from surfaces.cli.main import app
    from workers import runtime
    from workers.ledger.records import Payment
    from workers.payments.client import _validated, record_payment

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    def use_keys(value: str) -> None:
        monkeypatch.setenv("TENDER_SECRETS_KEY", value)
        reset_settings()
        runtime.reset()

    use_keys(old)
    instance = runtime.registry().create_instance("sandbox", {"api_key": "sk_sandbox_rotate_me_1"})
    fields = _validated("o-r", "5.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(
        get_database(), fields, payment_token="tok_saved_card_42", box=runtime.registry().box
    )
    use_keys(f"{new},{old}")
    result = CliRunner().invoke(app, ["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert "1 secret field(s) of 1 instance(s) and 1 saved payment token(s)" in result.output

    use_keys(new)  # the old key is gone
    plugin = runtime.registry().plugin_for(runtime.registry().get_instance(instance.id))
    assert plugin.secret_values() == ["sk_sandbox_rotate_me_1"]
    with get_database().sessions() as session:
        token = session.get(Payment, payment.id).payment_token  # type: ignore[union-attr]
    assert runtime.registry().box.decrypt({"$enc": token}) == "tok_saved_card_42"


def test_a_key_list_that_cannot_open_a_secret_leaves_everything_as_it_was(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from config.settings import reset_settings
    from surfaces.cli.main import app
    from workers import runtime

    monkeypatch.setenv("TENDER_SECRETS_KEY", Fernet.generate_key().decode())
    reset_settings()
    runtime.reset()
    runtime.registry().create_instance("sandbox", {"api_key": "sk_sandbox_keep_me_22"})
    before = stored_instance_rows()
    monkeypatch.setenv("TENDER_SECRETS_KEY", Fernet.generate_key().decode())  # the old one lost
    reset_settings()
    runtime.reset()
    result = CliRunner().invoke(app, ["secrets", "rotate"])
    assert result.exit_code == 1 and "TENDER_SECRETS_KEY" in result.output
    assert "Traceback" not in result.output
    assert stored_instance_rows() == before  # not one row re-encrypted, half or whole
    # and a worker refuses to start with it, in one line naming the setting
    started = CliRunner().invoke(app, ["worker"])
    assert started.exit_code == 1 and "TENDER_SECRETS_KEY" in started.output


def stored_instance_rows() -> list[tuple[Any, ...]]:
    """Every instance row as stored: its config, secrets sealed, exactly as written."""
    from sqlalchemy import text

    from registry.db import get_database

    with get_database().sessions() as session:
        rows = session.execute(text("SELECT id, config, version FROM plugin_instances ORDER BY id"))
        return [tuple(row) for row in rows]


@pytest.mark.parametrize("name", ["TENDER_API_TOKEN", "TENDER_SECRETS_KEY", "tender_vault_token"])
def test_an_env_reference_cannot_read_tenders_own_settings(
    box: SecretBox, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """An admin set a secret to env:TENDER_API_TOKEN and, with its own base address, was
    sent the bootstrap token (issue 36): Tender's own settings are never a secret source."""
    monkeypatch.setenv(name.upper(), "tnd_bootstrap_value")
    with pytest.raises(ConfigurationError, match="not an environment variable") as refused:
        secrets.resolve(AcmeConfig, {"secret_key": f"env:{name}"}, box)
    assert "tnd_bootstrap_value" not in str(refused.value)
    monkeypatch.setenv("TENDER_SECRET_ACME", "sk_from_env")
    assert secrets.resolve(AcmeConfig, {"secret_key": "env:TENDER_SECRET_ACME"}, box) == {
        "secret_key": "sk_from_env"
    }


def test_an_operator_can_limit_env_references_to_prefixes(
    box: SecretBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import reset_settings

    monkeypatch.setenv("TENDER_SECRET_ENV_PREFIXES", '["PSP_"]')
    monkeypatch.setenv("PSP_ACME_KEY", "sk_allowed")
    monkeypatch.setenv("ACME_WEBHOOK_SECRET", "whsec_not_allowed")
    reset_settings()
    try:
        assert secrets.resolve(AcmeConfig, {"secret_key": "env:PSP_ACME_KEY"}, box) == {
            "secret_key": "sk_allowed"
        }
        with pytest.raises(ConfigurationError, match="TENDER_SECRET_ENV_PREFIXES"):
            secrets.resolve(AcmeConfig, {"secret_key": "env:ACME_WEBHOOK_SECRET"}, box)
    finally:
        monkeypatch.delenv("TENDER_SECRET_ENV_PREFIXES")
        reset_settings()


def test_rotation_re_encrypts_saved_payment_methods_too(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved method's token is sealed like every secret and rotated with them (issue 35)."""
    from config.settings import reset_settings
    from registry.db import get_database
    from workers import runtime
    from workers.ledger.records import PaymentMethodRow
    from workers.ledger.rotation import rotate_stored_secrets
    from workers.payments.methods import import_payment_method

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    def use_keys(value: str) -> None:
        monkeypatch.setenv("TENDER_SECRETS_KEY", value)
        reset_settings()
        runtime.reset()

    use_keys(old)
    instance = runtime.registry().create_instance("sandbox", {}, tenant_id="t-r")
    method = import_payment_method(instance.id, "AUTH_rotate_me", "cust-r")
    use_keys(f"{new},{old}")
    rotated = rotate_stored_secrets(get_database(), runtime.registry().box)
    assert rotated.payment_tokens == 1
    use_keys(new)
    with get_database().sessions() as session:
        sealed = session.get(PaymentMethodRow, method.id).token  # type: ignore[union-attr]
    assert "AUTH_rotate_me" not in sealed
    assert runtime.registry().box.decrypt({"$enc": sealed}) == "AUTH_rotate_me"
