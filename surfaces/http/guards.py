"""What every request passes before any route, dependency or body parser sees it.

An ASGI middleware, so that it acts on the byte stream itself:

* **Body limits while streaming.** A request body is counted as it arrives and refused
  with 413 the moment it passes its route's limit (or at once, from its Content-Length),
  before authentication or JSON parsing read it into memory. Webhooks get the most a
  provider realistically sends; everything else a small operator or billing request.
* **Slow bodies.** A request body must arrive within ``api_body_timeout_s`` of the first
  read (408 otherwise): a client dripping bytes cannot hold a connection and a worker
  thread for ever (headers have their own deadline, ``surfaces.http.serving``).
* **NUL characters** in the path or the query are refused with 422 naming the parameter
  (PostgreSQL cannot store them, and no identifier holds one).
* **Frame and sniffing protection** on every answer: no page of Tender's may be framed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from config.settings import get_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WEBHOOK_BODY_LIMIT = 1_000_000  # bytes: providers send a few KB; anything near this is not them
API_BODY_LIMIT = 64 * 1024  # bytes: an operator's config or a payment request with metadata

SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: under it a browser sends "Origin: null" even on the console's own
    # form posts, which check_console_post must then refuse. same-origin gives other sites
    # nothing and this one its own origin.
    (b"referrer-policy", b"same-origin"),
)
DEFAULT_CSP = b"frame-ancestors 'none'"  # pages that need more (the console) set their own


def body_limit(path: str) -> int:
    """The most bytes a request to ``path`` may carry."""
    return WEBHOOK_BODY_LIMIT if path.startswith("/webhooks/") else API_BODY_LIMIT


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class RequestGuard:
    """The middleware; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _nul_refusal(scope)
        if refusal is not None:
            await _answer(send, 422, refusal)
            return
        limit = body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, 413, f"request body larger than {limit} bytes")
            return

        received = 0
        started = too_large = too_slow = body_done = False
        deadline: float | None = None

        async def counted_receive() -> Message:
            nonlocal received, too_large, too_slow, body_done, deadline
            if body_done:  # afterwards the app only waits for the client to disconnect
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + get_settings().api_body_timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                too_slow = True
                raise _TooSlow from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large or too_slow:  # the app turned our interruption into its own answer
                if not started:
                    started = True
                    await _refuse(send, too_large, limit)
                return
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", DEFAULT_CSP))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except (_TooLarge, _TooSlow):
            if not started:
                await _refuse(send, too_large, limit)


async def _refuse(send: Send, too_large: bool, limit: int) -> None:
    if too_large:
        await _answer(send, 413, f"request body larger than {limit} bytes")
    else:
        await _answer(send, 408, "request body not received in time")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _nul_refusal(scope: Scope) -> str | None:
    if "\x00" in scope["path"]:
        return "path: text must not contain NUL characters"
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or "\x00" in query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if "\x00" in key + value:
                return f"query.{key.replace(chr(0), '')}: text must not contain NUL characters"
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                (b"content-security-policy", DEFAULT_CSP),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
