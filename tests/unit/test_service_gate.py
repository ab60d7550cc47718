"""The tests' own gate on services: under CI a missing service fails the run, and no
error other than "nothing answered" is ever turned into a skip (issue 32)."""

from __future__ import annotations

import psycopg
import pytest
import redis

import tests.conftest as harness


def test_an_error_that_is_not_unreachable_is_raised_not_skipped() -> None:
    with pytest.raises(ValueError, match="bad schema"):
        harness.service_missing("PostgreSQL", ValueError("bad schema"))


def test_a_refused_connection_skips_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        harness.service_missing("Redis", redis.exceptions.ConnectionError("Connection refused"))


def test_a_refused_connection_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception):
        harness.service_missing("Redis", redis.exceptions.ConnectionError("Connection refused"))


def test_unreachable_reads_the_clients_wrapped_errors() -> None:
    refused = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "Connection refused"
    )
    assert harness.unreachable(refused)
    assert harness.unreachable(ConnectionRefusedError(111, "refused"))
    assert not harness.unreachable(psycopg.errors.UndefinedTable("relation does not exist"))


def test_ci_sets_the_gate() -> None:
    from pathlib import Path

    script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "export CI=1" in script
