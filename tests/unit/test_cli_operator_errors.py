"""What an operator sees when something around Tender is wrong: one line, exit 1, no
traceback, no SQL, no customer data (issue 21, findings 7 and 8)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config.settings import Settings, reset_settings
from registry.db import forget_databases
from surfaces.cli import main
from surfaces.cli.main import app
from tests.conftest import drop_postgres_schema, fresh_postgres_schema

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def one_line_error(code: int, out: str) -> str:
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Traceback" not in out and "SELECT" not in out and "INSERT" not in out
    return lines[0]


@pytest.fixture
def use_database(tender_env: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def use(url: str) -> None:
        monkeypatch.setenv("TENDER_DATABASE_URL", url)
        reset_settings()
        forget_databases()

    return use


def test_an_unreachable_database_is_one_line_naming_the_setting(use_database) -> None:  # type: ignore[no-untyped-def]
    use_database("postgresql+psycopg://tender:hunter2@127.0.0.1:1/tender")
    line = one_line_error(*invoke("plugins", "list"))
    assert "cannot use the database" in line and "TENDER_DATABASE_URL" in line
    assert "hunter2" not in line


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_without_the_schema_says_run_db_upgrade_and_shows_no_customer_data(
    use_database, tender_env: Path, backend: str
) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tender_env / 'empty.db'}" if backend == "sqlite" else fresh_postgres_schema()
    use_database(url)
    try:
        line = one_line_error(*invoke("pay", "inv-9", "10.00", "NGN", "ada.customer@example.com"))
        assert "run `tender db upgrade`" in line
        assert "ada.customer" not in line
        for command in (("worker",), ("beat",), ("api",)):
            assert "tender db upgrade" in one_line_error(*invoke(*command))
    finally:
        forget_databases()
        if backend == "postgresql":
            drop_postgres_schema(url)


def test_an_unreachable_broker_stops_the_worker_at_start(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_BROKER_URL", "redis://127.0.0.1:1/0")
    reset_settings()
    from workers.core.app import reconfigure

    reconfigure()
    try:
        line = one_line_error(*invoke("worker"))
        assert "cannot reach the broker" in line and "TENDER_BROKER_URL" in line
    finally:
        monkeypatch.delenv("TENDER_BROKER_URL")
        reset_settings()
        reconfigure()


def test_a_bad_setting_is_one_line_naming_it(
    tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_PROVIDER_TIMEOUT_S", "soon")
    reset_settings()
    assert "TENDER_PROVIDER_TIMEOUT_S" in one_line_error(*invoke("plugins", "list"))


def test_the_api_refuses_to_start_in_one_line(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    monkeypatch.setenv("TENDER_ENV", "production")
    monkeypatch.setenv("TENDER_SECRETS_KEY", Fernet.generate_key().decode())
    reset_settings()
    assert "TENDER_API_TOKEN must be set" in one_line_error(*invoke("api"))


def test_debug_shows_the_traceback(use_database) -> None:  # type: ignore[no-untyped-def]
    use_database("postgresql+psycopg://tender@127.0.0.1:1/tender")
    result = runner.invoke(app, ["--debug", "plugins", "list"])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "OperationalError"


def test_an_id_prefix_needs_four_characters(sqlite_url: str) -> None:
    assert invoke("plugins", "add", "sandbox", "--name", "a")[0] == 0
    line = one_line_error(*invoke("plugins", "activate", "a"))
    assert "give at least 4 characters" in line


def test_square_brackets_in_messages_and_names_are_shown(sqlite_url: str) -> None:
    code, out = invoke("plugins", "add", "paystack", "-c", "secret_key=nope", "-c", "public_key=x")
    assert "[paystack]" in one_line_error(code, out)
    code, out = invoke("plugins", "add", "sandbox", "--name", "[eu] primary")
    assert code == 0 and "[eu] primary" in out


def test_the_instance_table_keeps_whole_names_at_80_columns(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "Paystack Nigeria primary (Lagos)"
    invoke("plugins", "add", "sandbox", "--name", name, "--tenant", "merchant-7")
    monkeypatch.setattr(main.console, "width", 80)
    code, out = invoke("plugins", "list")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    cells = "".join(
        line.split("│")[2].strip() + " " for line in out.splitlines() if line.count("│") > 3
    )
    assert name in " ".join(cells.split())


def test_the_sqlite_file_is_readable_by_its_owner_only(sqlite_url: str) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_default_data_folder_does_not_depend_on_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TENDER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    first = Settings().data_dir
    monkeypatch.chdir("/")
    assert Settings().data_dir == first and first.is_absolute()
    assert os.fspath(first).endswith("tender")
