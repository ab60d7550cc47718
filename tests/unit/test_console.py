"""The console's rules without a browser (tests/integration/test_console_browser.py drives
one): the sign-in brake and sessions that end with their token, forms generated from every
plugin's config model, secrets kept when left blank, confirmations before deleting and
refunding, payment search and timeline, and the audit of console changes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from config.settings import reset_settings
from providers.paypal import PayPalConfig
from providers.stripe import StripeConfig
from registry.db import get_database
from registry.migrate import upgrade
from registry.secrets import hint
from registry.tokens import create_token, revoke_token
from surfaces.http.console.forms import config_fields, field_errors, parse_config_form
from surfaces.http.console.session import FREE_FAILURES, SignInThrottle
from tests.integration.test_api_limits import free_port
from workers import runtime
from workers.payments.client import request_payment

ADMIN = "console-admin-token-for-tests"
SECRET = "sk_test_console_never_shown_0123456789"
PUBLIC = "pk_test_console_public_9876543210"
SAME_ORIGIN = {"origin": "http://testserver"}


@pytest.fixture
def client(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    monkeypatch.setenv("TENDER_API_TOKEN", ADMIN)
    reset_settings()
    runtime.reset()
    reconfigure()
    with TestClient(create_app()) as test_client:
        yield test_client
    runtime.reset()
    monkeypatch.delenv("TENDER_API_TOKEN")
    reset_settings()


def csrf_of(client: TestClient, path: str = "/admin/sign-in") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def sign_in(client: TestClient, token: str = ADMIN) -> Any:
    return client.post(
        "/admin/sign-in",
        data={"csrf": csrf_of(client), "token": token, "next": "/admin"},
        headers=SAME_ORIGIN,
        follow_redirects=False,
    )


def post(client: TestClient, path: str, **data: str) -> Any:
    return client.post(
        path,
        data={"csrf": client.cookies.get("tender_csrf") or "", **data},
        headers=SAME_ORIGIN,
        follow_redirects=False,
    )


def paystack_instance(**changes: Any) -> Any:
    return runtime.registry().create_instance(
        "paystack", {"secret_key": SECRET, "public_key": PUBLIC}, **changes
    )


# --- sessions -------------------------------------------------------------------------------


def test_guessing_tokens_is_braked_and_a_success_forgives(client: TestClient) -> None:
    for _ in range(FREE_FAILURES):
        assert sign_in(client, "wrong").status_code == 401
    braked = sign_in(client, ADMIN)  # even the right token waits its turn
    assert braked.status_code == 429 and "wait" in braked.text

    clock = [0.0]
    throttle = SignInThrottle(clock=lambda: clock[0])
    for _ in range(FREE_FAILURES + 2):
        throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == 8.0  # 2 s, doubling per failure past the free ones
    assert throttle.wait_s("10.0.0.2") == 0.0  # another address is not braked
    clock[0] = 8.0
    assert throttle.wait_s("10.0.0.1") == 0.0
    throttle.succeeded("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == 0.0


def test_a_session_ends_when_its_token_is_revoked(client: TestClient) -> None:
    token_id, token = create_token(get_database(), "ops-bea", ["operate"])
    signed_in = sign_in(client, token)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/admin"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and token not in cookie
    assert client.get("/admin").status_code == 200

    revoke_token(get_database(), token_id)
    gone = client.get("/admin", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/admin/sign-in")


def test_sign_in_never_redirects_off_the_console(client: TestClient) -> None:
    answer = client.post(
        "/admin/sign-in",
        data={"csrf": csrf_of(client), "token": ADMIN, "next": "https://evil.example/admin"},
        headers=SAME_ORIGIN,
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/admin"


# --- forms from config models -----------------------------------------------------------------


def test_every_plugin_gets_its_form_from_its_config_model() -> None:
    paypal = {f.name: f for f in config_fields(PayPalConfig)}
    assert paypal["client_secret"].kind == "secret" and paypal["client_secret"].required
    assert paypal["environment"].kind == "select"
    assert paypal["environment"].choices == ("sandbox", "live")
    assert paypal["environment"].value == "sandbox"
    assert paypal["timeout_s"].kind == "number" and not paypal["timeout_s"].required
    assert "webhook" in paypal["webhook_id"].help.lower()  # from the docstring
    stripe = {f.name: f for f in config_fields(StripeConfig, {"secret_key": "********"})}
    assert stripe["secret_key"].value == ""  # a secret is never put in the page


def test_a_blank_secret_is_kept_and_errors_land_on_their_fields() -> None:
    form = {"client_id": "abc", "client_secret": "", "webhook_id": "W1", "timeout_s": ""}
    parsed = parse_config_form(PayPalConfig, form, editing=True)
    assert "client_secret" not in parsed and parsed["timeout_s"] == 10.0
    errors, rest = field_errors(
        "invalid paypal config: config.timeout_s: Input should be greater than 0; "
        "config.webhook_id: String should match pattern",
        PayPalConfig,
    )
    assert set(errors) == {"timeout_s", "webhook_id"} and rest == ""
    assert field_errors("changing base_url would send the stored ...", PayPalConfig)[1]


def test_secret_hints_show_a_prefix_and_four_characters_at_most() -> None:
    assert hint(SECRET) == "sk_test_••••6789"
    assert hint("short-secret") == "••••••••"


# --- editing and deleting ------------------------------------------------------------------


def test_editing_keeps_a_secret_left_blank_and_refuses_a_silent_redirect(
    client: TestClient,
) -> None:
    view = paystack_instance()
    sign_in(client)
    page = client.get(f"/admin/instances/{view.id}/edit").text
    assert SECRET not in page and "sk_test_••••6789" in page

    saved = post(
        client, f"/admin/instances/{view.id}/edit", secret_key="", public_key="", timeout_s="3"
    )
    assert saved.status_code == 303
    plugin = runtime.registry().plugin_for(runtime.registry().get_instance(view.id))
    assert set(plugin.secret_values()) == {SECRET, PUBLIC}  # both kept

    moved = post(client, f"/admin/instances/{view.id}/edit", base_url="https://api.example.net")
    assert moved.status_code == 422 and "give public_key, secret_key again" in moved.text.replace(
        "\n", " "
    )
    assert runtime.registry().get_instance(view.id).config["base_url"] != "https://api.example.net"


def test_delete_asks_first_and_is_audited_under_the_tokens_name(client: TestClient) -> None:
    view = paystack_instance(display_name="Old Paystack")
    _, token = create_token(get_database(), "ops-chi", ["admin"])
    sign_in(client, token)
    confirm = client.get(f"/admin/instances/{view.id}/delete")
    assert "cannot be undone" in confirm.text and 'value="yes"' in confirm.text
    assert post(client, f"/admin/instances/{view.id}/delete").status_code == 303
    assert all(v.id != view.id for v in runtime.registry().list_instances())
    audit = client.get("/admin/audit").text
    assert "instance.retire" in audit and "ops-chi" in audit


def test_an_operator_may_switch_and_route_but_not_configure(client: TestClient) -> None:
    view = paystack_instance()
    _, token = create_token(get_database(), "ops-dee", ["operate"])
    sign_in(client, token)
    routed = post(client, f"/admin/instances/{view.id}/routing", priority="50", weight="3")
    assert routed.status_code == 303 and "within" in routed.headers["location"]
    assert runtime.registry().get_instance(view.id).weight == 3
    assert post(client, f"/admin/instances/{view.id}/delete").status_code == 403
    assert client.get(f"/admin/instances/{view.id}/edit").status_code == 403
    assert "Edit configuration" not in client.get(f"/admin/instances/{view.id}").text


# --- payments ----------------------------------------------------------------------------------


def test_payments_are_found_by_any_of_their_keys_and_show_a_timeline(client: TestClient) -> None:
    runtime.registry().create_instance("sandbox", {}, is_active=True)
    receipt = request_payment(
        "ord-console-7", "12.50", "NGN", "ada@example.com", idempotency_key="key-console-7"
    )
    sign_in(client)
    for text in ("ord-console-7", "key-console-7", str(receipt.payment_id)):
        found = client.get("/admin/payments", params={"q": text}).text
        assert f"/admin/payments/{receipt.payment_id}" in found, text
    assert "None." in client.get("/admin/payments", params={"q": "no-such-order"}).text
    detail = client.get(f"/admin/payments/{receipt.payment_id}").text
    assert "Timeline" in detail and "12.50 NGN" in detail
    assert client.get(f"/admin/payments/{uuid.uuid4()}").status_code == 404


def test_tender_api_prints_the_consoles_address_and_serves_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tender.db'}"
    upgrade(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENDER_")} | {
        "TENDER_ENV": "test", "TENDER_DATA_DIR": str(tmp_path), "TENDER_DATABASE_URL": url,
        "COLUMNS": "200",
    }  # fmt: skip
    tender = Path(sys.executable).with_name("tender")
    process = subprocess.Popen(
        [str(tender), "api", "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"Tender console: http://127.0.0.1:{port}/admin" in line
        for _ in range(100):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/admin")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer.status_code == 200 and "Payment providers" in answer.text
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_parallel_guesses_cannot_outrun_the_brake() -> None:
    """14 of 60 parallel sign-ins were evaluated (issue 36): each attempt is now counted
    before its token is checked, in one step, so no more than the free tries get through."""
    import threading

    throttle = SignInThrottle()
    admitted: list[float] = []
    start = threading.Barrier(60)

    def guess() -> None:
        start.wait()
        admitted.append(throttle.attempt("10.0.0.9"))

    threads = [threading.Thread(target=guess) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for wait in admitted if wait == 0) == FREE_FAILURES


def test_sign_out_ends_the_session_on_the_server(client: TestClient) -> None:
    """Sign-out only deleted the browser's cookie: a copied cookie stayed valid for 8 h
    (issue 36). Now the session is ended on the server and its copy refused."""
    _, token = create_token(get_database(), "ops-cal", ["operate"])
    signed_in = sign_in(client, token)
    assert signed_in.status_code == 303
    copied = client.cookies.get("tender_session")
    assert copied and client.get("/admin").status_code == 200

    out = client.post(
        "/admin/sign-out", data={"csrf": csrf_of(client)}, headers=SAME_ORIGIN,
        follow_redirects=False,
    )  # fmt: skip
    assert out.status_code == 303
    client.cookies.set("tender_session", copied, path="/admin")  # the attacker's copy
    refused = client.get("/admin", follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"].startswith("/admin/sign-in")

    again = sign_in(client, token)  # the token itself still signs in anew
    assert again.status_code == 303 and client.get("/admin").status_code == 200
