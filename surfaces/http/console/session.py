"""Who is using the console: sign-in with an operator token, a signed session cookie, and a
brake on guessing.

* **Sign-in** exchanges a token (``tender tokens create``, or ``TENDER_API_TOKEN``) for a
  session cookie: signed (``itsdangerous``), ``HttpOnly``, ``SameSite=Strict``, ``Secure``
  over https, and lasting ``console_session_s``. It holds the token's SHA-256, never the
  token, and the token is checked again on every request, so a revoked token signs its
  sessions out at once.
* **Scripts** may still send ``Authorization: Bearer`` (or Basic) instead of a cookie.
* **Guessing** is slowed: after ``FREE_FAILURES`` failed sign-ins from one address within
  ``WINDOW_S``, each further attempt is refused for a delay that doubles per failure.
* With auth off (no ``TENDER_API_TOKEN``: development and test only) there is nothing to
  sign in to: the console is open, and says so on every page.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from config.settings import Settings, get_settings
from registry.db import get_database
from registry.tokens import (
    Caller,
    Scope,
    caller_of_digest,
    console_session_ended,
    end_console_session,
    token_digest,
)
from surfaces.http.auth import ScopeRequirement

SESSION_COOKIE = "tender_session"
FREE_FAILURES = 5  # failed sign-ins from one address before each costs a wait
WINDOW_S = 900.0  # failures older than this are forgotten
FIRST_WAIT_S = 2.0  # the wait after the first failure past the free ones; doubles after
MAX_WAIT_S = 300.0


class SignInRequired(Exception):
    """A console page was asked for without a session: the caller is sent to sign in."""


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    if settings.console_secret is not None:
        key = settings.console_secret.get_secret_value().encode()
    else:
        assert settings.api_token is not None  # sessions exist only while auth is on
        key = hmac.new(
            settings.api_token.get_secret_value().encode(), b"tender console session v1",
            hashlib.sha256,
        ).digest()  # fmt: skip
    return URLSafeTimedSerializer(key, salt="tender-console")


def auth_is_off() -> bool:
    return get_settings().api_token is None


def start_session(request: Request, response: Response, token: str) -> None:
    """Set the session cookie for ``token`` (already authenticated)."""
    settings = get_settings()
    response.set_cookie(
        SESSION_COOKIE,
        # "s": this session's own id, which sign-out records as ended on the server
        _serializer(settings).dumps({"d": token_digest(token), "s": secrets.token_urlsafe(24)}),
        max_age=int(settings.console_session_s),
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def end_session(request: Request, response: Response) -> None:
    """Sign out: the session is recorded as ended on the server (a copy of its cookie is
    refused from now on, not only the browser's deleted), and the cookie deleted."""
    session_id = (_payload(request) or {}).get("s")
    if isinstance(session_id, str):
        end_console_session(get_database(), session_id, get_settings().console_session_s)
    response.delete_cookie(SESSION_COOKIE, path="/admin")


def _payload(request: Request) -> dict[str, object] | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie or auth_is_off():
        return None
    settings = get_settings()
    try:
        payload = _serializer(settings).loads(cookie, max_age=int(settings.console_session_s))
    except BadSignature:
        return None
    return payload if isinstance(payload, dict) else None


def session_caller(request: Request) -> Caller | None:
    """The caller of a valid session cookie, or None (signed out, expired, revoked)."""
    payload = _payload(request)
    if payload is None:
        return None
    digest, session_id = payload.get("d"), payload.get("s")
    if not isinstance(digest, str) or not isinstance(session_id, str):
        return None  # a cookie from before sessions had ids: sign in again
    if console_session_ended(get_database(), session_id):
        return None
    return caller_of_digest(get_database(), digest)


@dataclass(frozen=True)
class ConsoleUser:
    """The console's caller: a name for pages and the audit, and what it may do."""

    name: str
    scopes: frozenset[Scope]
    auth_off: bool = False
    tenant_id: str | None = None  # bound to this tenant (None: platform-wide)

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes

    def sees(self, tenant_id: str | None) -> bool:
        return self.tenant_id is None or tenant_id == self.tenant_id


class ConsoleAccess:
    """A console route's dependency: a signed-in caller holding ``scope``.

    Without a session or an ``Authorization`` header, pages raise :class:`SignInRequired`
    (the app answers with the sign-in page); a token without the scope is 403.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.scopes = (scope,)
        self._header_check = ScopeRequirement(scope, console=True)

    def __call__(self, request: Request) -> ConsoleUser:
        if auth_is_off():
            request.state.caller = None
            return ConsoleUser("anonymous (auth off)", frozenset(Scope), auth_off=True)
        caller = session_caller(request)
        if caller is None:
            if not request.headers.get("authorization"):
                raise SignInRequired()
            caller = self._header_check(request)
            assert caller is not None
        elif not caller.may(self.scope):
            raise HTTPException(403, f"this token lacks the {self.scope.value} scope")
        request.state.caller = caller
        return ConsoleUser(caller.name, caller.scopes, tenant_id=caller.tenant_id)


@dataclass
class SignInThrottle:
    """Failed sign-ins per client address, in this process (each API process brakes on
    its own: a guesser spread over N processes gets N times the free tries, still a few)."""

    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, address: str) -> float:
        """Seconds ``address`` must wait before its next attempt (0: it may try now)."""
        with self._lock:
            return self._wait_locked(address, self.clock())

    def _wait_locked(self, address: str, now: float) -> float:
        recent = [t for t in self._failures.get(address, []) if now - t < WINDOW_S]
        self._failures[address] = recent
        if len(recent) < FREE_FAILURES:
            return 0.0
        wait = min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** (len(recent) - FREE_FAILURES))
        return max(0.0, recent[-1] + wait - now)

    def attempt(self, address: str) -> float:
        """Count an attempt from ``address`` before its token is checked, as a failure
        until :meth:`succeeded` forgives it: 0 to let it through, else the seconds it must
        wait (and it is not counted). Checking and counting in one step is what stops
        parallel guesses from all passing the check before any failure is recorded."""
        now = self.clock()
        with self._lock:
            wait = self._wait_locked(address, now)
            if wait > 0:
                return wait
            self._failures.setdefault(address, []).append(now)
            self._bound()
            return 0.0

    def _bound(self) -> None:
        if len(self._failures) > 10_000:  # bounded: drop the oldest addresses
            for stale in list(self._failures)[:1000]:
                del self._failures[stale]

    def failed(self, address: str) -> None:
        with self._lock:
            self._failures.setdefault(address, []).append(self.clock())
            self._bound()

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
