"""``tender demo`` runs as the README says: on the embedded defaults with no environment,
and on the real Redis and PostgreSQL when their URLs are set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import redis_db_url

TENDER = shutil.which("tender") or str(Path(sys.executable).with_name("tender"))


def run_demo(cwd: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TENDER, "demo", "--payments", "6", *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TENDER_")}


def test_demo_on_a_fresh_machine_with_no_environment(tmp_path: Path) -> None:
    result = run_demo(tmp_path, clean_environment())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "embedded SQLite + filesystem broker" in result.stdout
    assert "demo complete" in result.stdout
    assert "sk_demo_primary_secret" not in result.stdout + result.stderr


@pytest.mark.integration
def test_demo_uses_redis_and_postgres_when_configured(
    tmp_path: Path, integration_env: dict[str, str]
) -> None:
    env = {
        **clean_environment(),
        **integration_env,
        "TENDER_BROKER_URL": redis_db_url(2),
    }
    result = run_demo(tmp_path, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "the configured database and broker" in result.stdout
    assert "demo complete" in result.stdout


def test_demo_swaps_to_stripe_through_the_real_sdk(tmp_path: Path) -> None:
    """`tender demo --provider stripe`, offline: the Stripe instance points at the fake,
    with a test-mode key given only by environment reference."""
    from tests.fakes.stripe.server import FakeStripe

    with FakeStripe() as fake:
        env = clean_environment() | {"STRIPE_SECRET_KEY": fake.secret_key}
        result = run_demo(tmp_path, env, "--provider", "stripe", "--stripe-base-url", fake.base_url)
        intents = [form for _, path, form in fake.requests if path == "/v1/payment_intents"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "stripe-backup" in result.stdout and "demo complete" in result.stdout
    assert fake.secret_key not in result.stdout + result.stderr
    assert intents and all(form["payment_method"] == "pm_card_visa" for form in intents)


def test_demo_refuses_a_live_stripe_key(tmp_path: Path) -> None:
    env = clean_environment() | {"STRIPE_SECRET_KEY": "sk_live_not_for_demos_0123456789"}
    result = run_demo(tmp_path, env, "--provider", "stripe")
    assert result.returncode == 1 and "test-mode key" in result.stdout + result.stderr
