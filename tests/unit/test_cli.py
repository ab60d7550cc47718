"""The ``tender`` CLI: helpful output, clear errors, non-zero exit on failure."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from surfaces.cli.main import app

runner = CliRunner()


@pytest.fixture
def cli_env(sqlite_url: str) -> str:
    return sqlite_url


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_lists_every_command() -> None:
    code, out = invoke("--help")
    assert code == 0
    for command in ("demo", "worker", "beat", "db", "plugins", "pay", "payments", "events"):
        assert command in out


def test_plugins_add_list_activate_with_masked_secret(cli_env: str) -> None:
    code, out = invoke(
        "plugins",
        "add",
        "sandbox",
        "--name",
        "primary",
        "-c",
        "api_key=sk_cli_secret_42",
        "-c",
        "latency_ms=5",
    )
    assert code == 0, out
    assert "sk_cli_secret_42" not in out
    code, out = invoke("plugins", "list", "--json")
    assert code == 0
    instances = json.loads(out)
    assert [(i["display_name"], i["is_active"], i["config"]["api_key"]) for i in instances] == [
        ("primary", False, "********")
    ]
    assert instances[0]["config"]["latency_ms"] == 5
    code, out = invoke("plugins", "activate", instances[0]["id"][:8])
    assert code == 0, out
    code, out = invoke("plugins", "list", "--json")
    assert json.loads(out)[0]["is_active"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plugins", "add", "nosuch"], "unknown plugin 'nosuch'"),
        (["plugins", "add", "sandbox", "-c", "latency_ms=-1"], "config.latency_ms"),
        (["plugins", "add", "sandbox", "-c", "bogus=1"], "config.bogus"),
        (["plugins", "activate", "ffffffff"], "matches 0 instances"),
        (["pay", "o-1", "10.001", "NGN", "ada@example.com"], "more than 2 decimal place"),
        (["pay", "o-1", "10", "XYZ", "ada@example.com"], "unknown currency 'XYZ'"),
        (["pay", "o-1", "0", "NGN", "ada@example.com"], "greater than zero"),
        (["pay", "o-1", "10", "NGN", "not-an-email"], "customer_email"),
        (["payments", "show", "not-a-uuid"], "not a payment id"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_1(
    cli_env: str, args: list[str], message: str
) -> None:
    code, out = invoke(*args)
    assert code == 1
    assert message in out
    assert "Traceback" not in out


def test_pay_then_show(cli_env: str) -> None:
    code, out = invoke("pay", "o-7", "12.50", "NGN", "ada@example.com")
    assert code == 0, out
    payment_id = out.split()[1]
    code, out = invoke("payments", "show", payment_id, "--json")
    assert code == 0, out
    view = json.loads(out)
    assert (
        view["amount_minor"] == 1250 and view["status"] == "requested" and view["currency"] == "NGN"
    )
    code, out = invoke("pay", "o-7", "12.50", "NGN", "ada@example.com")
    assert payment_id in out and "earlier request" in out
