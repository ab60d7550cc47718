"""The findings of the outside probe (issue 21), each reproduced and refused."""

# ruff: noqa: F811 - tests take the imported ``fake_paystack`` fixture as an argument

from __future__ import annotations

import base64
import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from config.settings import reset_settings
from providers.errors import ConfigurationError
from registry.errors import RegistryError
from tests.fakes.paystack.fixtures import fake_paystack  # noqa: F401
from tests.fakes.paystack.server import FakePaystack
from workers import runtime
from workers.monitoring.health import health_check_all

TOKEN = "t0ken-for-hardening-tests"


def app_client() -> Iterator[TestClient]:
    """The HTTP app over the database the fixture chose (and its embedded broker)."""
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    runtime.reset()
    reconfigure()
    with TestClient(create_app()) as test_client:
        yield test_client
    runtime.reset()


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    """The app over SQLite, then the real PostgreSQL."""
    yield from app_client()


@pytest.fixture
def sqlite_client(sqlite_url: str) -> Iterator[TestClient]:
    yield from app_client()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TENDER_API_TOKEN", TOKEN)
    reset_settings()
    yield TOKEN
    monkeypatch.delenv("TENDER_API_TOKEN")
    reset_settings()


class Listener:
    """A server of the attacker's on loopback: records every Authorization it is sent."""

    def __init__(self) -> None:
        seen = self.seen = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None: ...

            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization", ""))
                self.send_response(200)
                self.end_headers()

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def add_paystack(client: TestClient, fake: FakePaystack, **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/instances",
        json={
            "plugin_name": "paystack",
            "config": {
                "secret_key": fake.secret_key,
                "public_key": fake.public_key,
                "base_url": fake.base_url,
            },
            "is_active": True,
            **extra,
        },
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


# --- 1. an address alone cannot redirect the stored keys -------------------------------


def test_changing_the_address_alone_is_refused_and_no_key_leaves(
    sqlite_client: TestClient, fake_paystack: FakePaystack
) -> None:
    created = add_paystack(sqlite_client, fake_paystack)
    attacker = Listener()
    try:
        for replace in ("false", "true"):
            answer = sqlite_client.patch(
                f"/instances/{created['id']}/config?replace={replace}",
                json={"base_url": attacker.url, "secret_key": "********"},
            )
            assert answer.status_code == 422
            assert "would send the stored" in answer.json()["detail"]
            assert "give secret_key" in answer.json()["detail"].replace("public_key, ", "")
        health_check_all(force=True)
        assert attacker.seen == []
        assert sqlite_client.get(f"/instances/{created['id']}").json()["config"]["base_url"] == (
            fake_paystack.base_url
        )
    finally:
        attacker.close()


def test_changing_the_address_with_the_secrets_restated_is_allowed(
    sqlite_client: TestClient, fake_paystack: FakePaystack
) -> None:
    created = add_paystack(sqlite_client, fake_paystack)
    with FakePaystack() as other:
        answer = sqlite_client.patch(
            f"/instances/{created['id']}/config",
            json={
                "base_url": other.base_url,
                "secret_key": other.secret_key,
                "public_key": other.public_key,
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["config"]["base_url"] == other.base_url


@pytest.mark.parametrize(
    "address",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://2852039166/",  # 169.254.169.254 as one number
        "http://0xa9fea9fe/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://metadata.google.internal/",
        "http://100.100.100.200/",
        "http://user:pass@127.0.0.1/",
    ],
)
def test_link_local_and_metadata_addresses_are_refused(
    sqlite_client: TestClient, fake_paystack: FakePaystack, address: str
) -> None:
    answer = sqlite_client.post(
        "/instances",
        json={
            "plugin_name": "paystack",
            "config": {
                "secret_key": fake_paystack.secret_key,
                "public_key": fake_paystack.public_key,
                "base_url": address,
            },
        },
    )
    assert answer.status_code == 422
    assert "config.base_url" in answer.json()["detail"]
    assert fake_paystack.secret_key not in answer.text


def test_production_sends_keys_only_to_the_providers_own_hosts(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, fake_paystack: FakePaystack
) -> None:
    from cryptography.fernet import Fernet

    monkeypatch.setenv("TENDER_ENV", "production")
    monkeypatch.setenv("TENDER_SECRETS_KEY", Fernet.generate_key().decode())
    reset_settings()
    runtime.reset()
    registry = runtime.registry()
    keys = {"secret_key": fake_paystack.secret_key, "public_key": fake_paystack.public_key}
    for address in (fake_paystack.base_url, "http://api.paystack.co", "https://evil.example"):
        with pytest.raises(ConfigurationError, match=r"only at https://api\.paystack\.co"):
            registry.create_instance("paystack", {**keys, "base_url": address})
    # The default address is Paystack's own.
    assert registry.create_instance("paystack", keys).plugin_name == "paystack"


# --- 2. bodies are limited while they stream, before authentication --------------------


def test_large_bodies_are_refused_before_authentication(
    sqlite_client: TestClient, token: str
) -> None:
    big = b"x" * (2 * 1024 * 1024)
    for path in ("/instances", "/payments", "/webhooks/paystack"):
        answer = sqlite_client.post(path, content=big)
        assert answer.status_code == 413, path
        assert "larger than" in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(64):
            yield b"y" * 65536

    assert sqlite_client.post("/instances", content=chunks()).status_code == 413
    # Small bodies still reach authentication.
    assert sqlite_client.post("/instances", json={}).status_code == 401


# --- 3. CSRF: console posts need its origin and token; Basic cannot write the JSON API ---


def console_form(client: TestClient) -> tuple[str, str]:
    page = client.get("/admin")
    match = re.search(
        r'action="(/admin/instances/[^"]+/activate)".*?name="csrf" value="([^"]+)"', page.text
    )
    assert match is not None
    return match.group(1), match.group(2)


@pytest.mark.parametrize("headers", [{}, {"origin": "null"}, {"origin": "https://evil.example"}])
def test_console_posts_from_no_or_another_origin_are_refused(
    sqlite_client: TestClient, fake_paystack: FakePaystack, headers: dict[str, str]
) -> None:
    created = add_paystack(sqlite_client, fake_paystack, is_active=False)
    action, csrf = console_form(sqlite_client)
    answer = sqlite_client.post(
        action, data={"csrf": csrf}, headers=headers, follow_redirects=False
    )
    assert answer.status_code == 403
    assert sqlite_client.get(f"/instances/{created['id']}").json()["is_active"] is False


def test_console_posts_without_the_csrf_token_are_refused(
    sqlite_client: TestClient, fake_paystack: FakePaystack
) -> None:
    add_paystack(sqlite_client, fake_paystack, is_active=False)
    action, csrf = console_form(sqlite_client)
    same_origin = {"origin": "http://testserver"}
    for data in ({}, {"csrf": "forged" + csrf[6:]}):
        answer = sqlite_client.post(action, data=data, headers=same_origin, follow_redirects=False)
        assert answer.status_code == 403
    answer = sqlite_client.post(
        action, data={"csrf": csrf}, headers=same_origin, follow_redirects=False
    )
    assert answer.status_code == 303


def test_basic_credentials_cannot_change_anything_in_the_json_api(
    sqlite_client: TestClient, fake_paystack: FakePaystack, token: str
) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"tender:{token}".encode()).decode()}
    created = sqlite_client.post(
        "/instances",
        headers=bearer,
        json={
            "plugin_name": "paystack",
            "config": {
                "secret_key": fake_paystack.secret_key,
                "public_key": fake_paystack.public_key,
                "base_url": fake_paystack.base_url,
            },
            "is_active": True,
        },
    ).json()
    deactivate = f"/instances/{created['id']}/deactivate"
    assert sqlite_client.post(deactivate, headers=basic).status_code == 401
    assert sqlite_client.get(f"/instances/{created['id']}", headers=basic).json()["is_active"]
    assert (
        sqlite_client.post(f"/payments/{created['id']}/refunds", headers=basic).status_code == 401
    )
    assert sqlite_client.post(deactivate, headers=bearer).status_code == 200


def test_no_page_may_be_framed_and_the_console_has_a_strict_policy(
    sqlite_client: TestClient,
) -> None:
    for path in ("/healthz", "/instances", "/admin", "/docs", "/nowhere"):
        answer = sqlite_client.get(path)
        assert answer.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
    policy = sqlite_client.get("/admin").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "form-action 'self'" in policy


# --- 4. integers and text the database cannot hold: 422, never 500 ----------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": 99999999999999999999}, "priority"),
        ({"priority": 2147483648}, "priority"),
        ({"weight": 2147483648}, "weight"),
        ({"display_name": "Lagos\x00"}, "display_name"),
        ({"tenant_id": "t\x00"}, "tenant_id"),
        ({"config": {"callback_url": "https://shop.example/\x00"}}, "config.callback_url"),
    ],
)
def test_out_of_range_integers_and_nul_characters_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    config = {"secret_key": "sk_test_x1234567", "public_key": "pk_test_x1234567"}
    payload = {"plugin_name": "paystack", **body}
    payload["config"] = {**config, **body.get("config", {})}
    answer = client.post("/instances", json=payload)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"]
    assert client.get("/instances").json() == []


def test_nul_characters_in_payments_paths_and_queries_are_422(client: TestClient) -> None:
    payment = {
        "order_id": "ord\x00-1",
        "amount": "10.00",
        "currency": "NGN",
        "customer_email": "ada@example.com",
    }
    answer = client.post("/payments", json=payment)
    assert answer.status_code == 422 and "order_id" in answer.json()["detail"]
    answer = client.post("/payments", json={**payment, "order_id": "o", "metadata": {"k": "v\x00"}})
    assert answer.status_code == 422 and "metadata.k" in answer.json()["detail"]
    answer = client.get("/instances", params={"tenant_id": "t\x00"})
    assert answer.status_code == 422 and "tenant_id" in answer.json()["detail"]
    assert client.get("/payments/%00").status_code == 422


# --- 5. amounts are digits and one point, nothing else ---------------------------------


@pytest.mark.parametrize("amount", [" 5 ", "5_000", "\u0665", "1e3", "5.", "+5"])
def test_lenient_amounts_are_refused_at_the_api(sqlite_client: TestClient, amount: str) -> None:
    answer = sqlite_client.post(
        "/payments",
        json={"order_id": "o-1", "amount": amount, "currency": "NGN", "customer_email": "a@b.co"},
    )
    assert answer.status_code == 422 and "amount" in answer.json()["detail"]


# --- 8. the smaller items ----------------------------------------------------------------


def test_api_docs_work_offline(sqlite_client: TestClient) -> None:
    page = sqlite_client.get("/docs").text
    assert "cdn." not in page and "jsdelivr" not in page
    script = re.search(r'src="([^"]+swagger-ui-bundle\.js)"', page)
    assert script is not None
    assert sqlite_client.get(script.group(1)).status_code == 200


def test_openapi_documents_the_error_body_every_refusal_has(sqlite_client: TestClient) -> None:
    spec = sqlite_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorBody"]["properties"]["detail"]["type"] == "string"
    create = spec["paths"]["/instances"]["post"]["responses"]
    refund = spec["paths"]["/payments/{payment_id}/refunds"]["post"]["responses"]
    webhook = spec["paths"]["/webhooks/{plugin}"]["post"]["responses"]
    for responses, statuses in (
        (create, "422 413 401"),
        (refund, "404 409 422"),
        (webhook, "400 401 404 413"),
    ):
        for status in statuses.split():
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }
    refused = sqlite_client.post("/instances", json={"plugin_name": 5})
    assert refused.status_code == 422 and isinstance(refused.json()["detail"], str)


def test_registry_bounds_hold_for_code_and_the_cli_too(sqlite_url: str) -> None:
    registry = runtime.registry()
    with pytest.raises(RegistryError, match="priority must be a whole number from 0 to 2147483647"):
        registry.create_instance("sandbox", {}, priority=2**31)
    with pytest.raises(RegistryError, match="display_name: must not contain NUL"):
        registry.create_instance("sandbox", {}, display_name="a\x00b")


def test_forwarded_headers_are_believed_only_from_configured_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rotating X-Forwarded-For outran the sign-in brake (issue 36): uvicorn believed it
    from any local client. Now only from TENDER_TRUSTED_PROXIES; connections are capped."""
    from config.settings import get_settings, reset_settings
    from surfaces.http.serving import server_options

    reset_settings()
    options = server_options(get_settings())
    assert options["proxy_headers"] is False and options["forwarded_allow_ips"] is None
    assert options["limit_concurrency"] == 1000
    monkeypatch.setenv("TENDER_TRUSTED_PROXIES", '["10.0.0.5", "10.0.0.6"]')
    reset_settings()
    options = server_options(get_settings())
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == "10.0.0.5,10.0.0.6"
    reset_settings()


def test_a_condition_repeated_per_accept_is_logged_once_a_minute() -> None:
    """At the descriptor limit the API logged one traceback per accept (267 MB, issue
    36): one record per condition goes through a minute, the next says how many it
    stood for."""
    import logging

    from config.logging import OncePerCondition

    now = [0.0]
    quiet = OncePerCondition(every_s=60, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            import sys

            return logging.LogRecord(
                "asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                None, sys.exc_info(),
            )  # fmt: skip

    passed = [quiet.filter(record()) for _ in range(1000)]
    assert passed.count(True) == 1
    now[0] = 61.0
    later = record()
    assert quiet.filter(later) and "999 more" in str(later.msg)


@contextlib.contextmanager
def served(app: Any, settings: Any) -> Iterator[int]:
    """``app`` served by uvicorn itself, with ``tender api``'s options, on a free loopback
    port (yielded) in a thread, until the block ends."""
    import socket
    import threading
    import time

    import uvicorn

    from surfaces.http.serving import server_options

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", **server_options(settings)
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def ask(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the first bytes of the answer (b"": closed)."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(request)
        connection.settimeout(3)
        return connection.recv(100)


def test_a_connection_whose_headers_never_finish_is_closed() -> None:
    """Partial-header connections stayed open at least 60 s (issue 36), and enough of
    them exhausted the API's descriptors: now closed api_header_timeout_s after opening,
    while a complete request is served as ever. Through uvicorn itself, on a real socket."""
    import time

    from config.settings import Settings

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with served(app, Settings(api_header_timeout_s=0.5)) as port:
        started = time.monotonic()
        # and never the blank line: closed by the server
        assert ask(port, b"GET / HTTP/1.1\r\nHost: x\r\n") == b""
        assert time.monotonic() - started < 2.5
        fine = ask(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert fine.startswith(b"HTTP/1.1 200")


def test_a_body_that_drips_in_too_slowly_is_refused_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers have a deadline (above); a body sent a byte at a time held a connection and
    a worker thread as long as the client liked (issue 36): 408 past api_body_timeout_s."""
    from config.settings import Settings, reset_settings
    from surfaces.http.guards import RequestGuard

    async def reads_body(scope, receive, send):  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setenv("TENDER_API_BODY_TIMEOUT_S", "0.5")
    reset_settings()
    try:
        with served(RequestGuard(reads_body), Settings()) as port:
            slow = b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab"
            assert ask(port, slow).startswith(b"HTTP/1.1 408")
            fine = (
                b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Connection: close\r\n\r\nok"
            )
            assert ask(port, fine).startswith(b"HTTP/1.1 200")
    finally:
        reset_settings()
