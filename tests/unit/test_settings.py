"""Settings: the TENDER_ environment, validated once at start, failing with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.celery import celery_options
from config.settings import (
    Environment,
    SettingsError,
    get_settings,
    load_settings,
    reset_settings,
)

SECRET = "kY3s-Do-Not-Echo-Me-0123456789abcdefABCDEF="


def test_defaults_run_embedded_under_the_data_dir(tender_env: Path) -> None:
    settings = load_settings()
    data_dir = tender_env / "data"
    assert settings.env is Environment.TEST
    assert settings.data_dir == data_dir
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite:///{(data_dir / 'tender.db').resolve()}"
    assert settings.resolved_broker_url == "filesystem://"
    assert settings.embedded_broker
    assert settings.broker_folder == (data_dir / "broker").resolve()
    assert settings.secrets_key is None
    assert settings.health_interval_s == 30.0
    assert settings.registry_poll_s == 0.25


def test_environment_defaults_to_development(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TENDER_ENV")
    assert load_settings().env is Environment.DEVELOPMENT


def test_tender_prefixed_variables_configure_services_and_intervals(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_ENV", "production")
    monkeypatch.setenv("TENDER_DATABASE_URL", "postgresql://tender@db/tender")
    monkeypatch.setenv("TENDER_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("TENDER_HEALTH_INTERVAL_S", "12.5")
    monkeypatch.setenv("TENDER_REGISTRY_POLL_S", "0.1")
    monkeypatch.setenv("TENDER_ALERT_EMAIL_TO", '["ops@example.com"]')
    monkeypatch.setenv("HEALTH_INTERVAL_S", "99")  # no prefix: ignored
    settings = load_settings()
    assert settings.env is Environment.PRODUCTION
    assert settings.resolved_database_url == "postgresql://tender@db/tender"
    assert settings.resolved_broker_url == "redis://redis:6379/0"
    assert not settings.embedded_broker
    assert settings.health_interval_s == 12.5
    assert settings.registry_poll_s == 0.1
    assert settings.alert_email_to == ["ops@example.com"]


def test_blank_service_urls_mean_the_embedded_default(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_DATABASE_URL", "")
    monkeypatch.setenv("TENDER_BROKER_URL", "")
    settings = load_settings()
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.embedded_broker


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TENDER_HEALTH_INTERVAL_S", "-3", "greater than 0"),
        ("TENDER_HEALTH_INTERVAL_S", "0", "greater than 0"),
        ("TENDER_HEALTH_INTERVAL_S", "often", "valid number"),
        ("TENDER_REGISTRY_POLL_S", "-1", "greater than 0"),
        ("TENDER_ENV", "prod", "'development', 'test' or 'production'"),
        ("TENDER_ALERT_SMTP_PORT", "70000", "less than 65536"),
        ("TENDER_CIRCUIT_FAILURE_THRESHOLD", "0", "greater than or equal to 1"),
        ("TENDER_ALERT_EMAIL_TO", "ops@example.com", "JSON list"),
        ("TENDER_WORKER_PREFETCH_MULTIPLIER", "0", "greater than or equal to 1"),
        ("TENDER_WORKER_PREFETCH_MULTIPLIER", "5", "less than or equal to 4"),
        ("TENDER_WORKER_THREAD_NICE", "-1", "greater than or equal to 0"),
        ("TENDER_WORKER_THREAD_NICE", "20", "less than or equal to 19"),
    ],
)
def test_a_bad_value_fails_naming_the_variable_and_what_it_expects(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}:" in message
    assert expected in message


def test_every_bad_variable_is_named_at_once(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_ENV", "staging")
    monkeypatch.setenv("TENDER_RELAY_INTERVAL_S", "soon")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "TENDER_ENV" in str(caught.value)
    assert "TENDER_RELAY_INTERVAL_S" in str(caught.value)


def test_a_bad_value_fails_at_first_use_of_get_settings(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_HEALTH_INTERVAL_S", "-3")
    reset_settings()
    with pytest.raises(SettingsError, match="TENDER_HEALTH_INTERVAL_S"):
        get_settings()


def test_settings_are_read_once_until_reset(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("TENDER_HEALTH_INTERVAL_S", "5")
    assert get_settings().health_interval_s == 30.0
    reset_settings()
    assert get_settings().health_interval_s == 5.0


def test_settings_are_immutable(tender_env: Path) -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.health_interval_s = 1.0  # type: ignore[misc]


def test_the_secrets_key_is_never_echoed(tender_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENDER_SECRETS_KEY", SECRET)
    settings = load_settings()
    assert settings.secrets_key is not None
    assert settings.secrets_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    # Nor in the error raised for another variable read alongside it.
    monkeypatch.setenv("TENDER_HEALTH_INTERVAL_S", "-3")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("multiplier", [1, 2, 3, 4])
def test_redis_redelivers_only_after_every_reserved_message_could_have_run(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch, multiplier: int
) -> None:
    """A thread reserves ``multiplier`` messages and runs them one after another, each
    within the time limit: Redis must not hand the last one to a second worker first."""
    monkeypatch.setenv("TENDER_WORKER_PREFETCH_MULTIPLIER", str(multiplier))
    monkeypatch.setenv("TENDER_TASK_TIME_LIMIT_S", "60")
    options = celery_options(load_settings())
    assert options["worker_prefetch_multiplier"] == multiplier
    assert options["broker_transport_options"]["visibility_timeout"] > multiplier * 60
    assert options["task_acks_late"] and options["task_reject_on_worker_lost"]


def test_workers_reserve_two_messages_per_thread_by_default(tender_env: Path) -> None:
    options = celery_options(load_settings())
    assert options["worker_prefetch_multiplier"] == 2
    assert options["broker_transport_options"]["visibility_timeout"] == 4 * 300
