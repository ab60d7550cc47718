"""Who may call the HTTP API: one place for the token check and the console's CSRF rules.

With ``TENDER_API_TOKEN`` set, operator and billing routes need ``Authorization: Bearer
<token>``: that bootstrap admin token, or one made by ``tender tokens create`` with scopes
(``registry.tokens``); every route declares the scope it needs (``require``). A browser may also send HTTP Basic (user ``tender``, the token as password), but
browsers send Basic credentials by themselves, even on a form another site posts, so Basic
is accepted only where that cannot change anything: reading the JSON API, and the console,
whose forms carry a CSRF token and must come from the console's own origin.
Unset, there is no auth, which :func:`check_api_auth` allows in development and test only.
Webhooks are authenticated by their providers' signatures instead.
"""

import base64
import binascii
import hmac
import secrets
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Response

from config.settings import Environment, Settings, SettingsError, get_settings
from registry.db import get_database
from registry.tokens import Caller, Scope, authenticate

AUTH_CHALLENGE = 'Bearer, Basic realm="tender"'
BASIC_USER = "tender"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_COOKIE = "tender_csrf"
CSRF_FIELD = "csrf"


def check_api_auth(settings: Settings) -> None:
    """Refuse to serve an unauthenticated API in production."""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    if settings.env is Environment.PRODUCTION and not token:
        raise SettingsError("TENDER_API_TOKEN must be set when TENDER_ENV=production")


def _presented(authorization: str) -> tuple[Literal["bearer", "basic"], str] | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return "bearer", credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        return ("basic", password) if user == BASIC_USER else None
    return None


def _caller(request: Request, *, basic_allowed: bool) -> Caller | None:
    """The authenticated caller; None while auth is off (no TENDER_API_TOKEN: development
    and test only, see check_api_auth); 401 for a missing, unknown, revoked or expired token."""
    if get_settings().api_token is None:
        return None
    presented = _presented(request.headers.get("authorization", ""))
    caller = authenticate(get_database(), presented[1]) if presented else None
    if presented is None or caller is None:
        raise HTTPException(
            401, "missing or wrong API token", headers={"WWW-Authenticate": AUTH_CHALLENGE}
        )
    if presented[0] == "basic" and not basic_allowed:
        raise HTTPException(
            401,
            "HTTP Basic is accepted for reading only: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


class ScopeRequirement:
    """A route's FastAPI dependency: the caller holds one of ``scopes`` (403 otherwise).
    ``console``: Basic credentials are taken on every method (the console's forms carry a
    CSRF token and must come from its own origin instead)."""

    def __init__(self, *scopes: Scope, console: bool = False) -> None:
        self.scopes = scopes
        self.console = console

    def __call__(self, request: Request) -> Caller | None:
        caller = _caller(request, basic_allowed=self.console or request.method in SAFE_METHODS)
        if caller is not None and not any(caller.may(s) for s in self.scopes):
            wanted = " or ".join(s.value for s in self.scopes)
            raise HTTPException(403, f"this token lacks the {wanted} scope")
        request.state.caller = caller
        return caller


def tenant_of(request: Request) -> str | None:
    """The tenant the caller's token is bound to (None: platform-wide, or auth off)."""
    caller = getattr(request.state, "caller", None)
    return caller.tenant_id if caller is not None else None


def tenant_for_body(request: Request, named: str | None) -> str | None:
    """The tenant a request body may act for: a bound token's own (a body naming none
    gets it; one naming another tenant is refused, 403); a platform-wide token's choice."""
    bound = tenant_of(request)
    if bound is None:
        return named
    if named not in (None, bound):
        raise HTTPException(
            403, f"this token is bound to tenant {bound!r}; it cannot act for another"
        )
    return bound


def actor_of(request: Request) -> str:
    """Who the audit trail names for this request: the token's name."""
    caller = getattr(request.state, "caller", None)
    return caller.name if caller is not None else "anonymous (auth off)"


def require(*scopes: Scope, console: bool = False) -> Any:
    """``Depends(...)`` of a route that needs one of ``scopes``."""
    return Depends(ScopeRequirement(*scopes, console=console))


def csrf_token(request: Request) -> str:
    """The console's CSRF token: the one in the browser's cookie, or a new one."""
    current = request.cookies.get(CSRF_COOKIE, "")
    return current if len(current) >= 32 else secrets.token_urlsafe(32)


def keep_csrf_token(request: Request, response: Response, token: str) -> None:
    """Set the CSRF cookie on ``response`` unless the browser already holds ``token``."""
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path="/admin",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


def check_console_post(request: Request, csrf_field: str | None) -> None:
    """A console form post: 403 unless it comes from the console's own origin and carries
    the CSRF token of the console's cookie (another site can read neither)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null" or urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "form post refused: it must come from this console's own page")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not csrf_field or not hmac.compare_digest(cookie, csrf_field):
        raise HTTPException(403, "form post refused: missing or stale CSRF token; reload the page")
