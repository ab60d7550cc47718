"""Who may call the HTTP API: one place for the token check and the same-origin rule.

With ``TENDER_API_TOKEN`` set, operator and billing routes need ``Authorization: Bearer
<token>`` (or HTTP Basic with the token as password, so a browser can open the console).
Unset, there is no auth, which :func:`check_api_auth` allows in development and test only.
Webhooks are authenticated by their providers' signatures instead.
"""

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from config.settings import Environment, Settings, SettingsError, get_settings

AUTH_CHALLENGE = 'Bearer, Basic realm="tender"'


def check_api_auth(settings: Settings) -> None:
    """Refuse to serve an unauthenticated API in production."""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    if settings.env is Environment.PRODUCTION and not token:
        raise SettingsError("TENDER_API_TOKEN must be set when TENDER_ENV=production")


def _presented_token(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def require_api_token(request: Request) -> None:
    """FastAPI dependency: the request carries ``TENDER_API_TOKEN`` (when one is set)."""
    token = get_settings().api_token
    expected = token.get_secret_value() if token else ""
    if not expected:
        return
    given = _presented_token(request.headers.get("authorization", ""))
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401, "missing or wrong API token", headers={"WWW-Authenticate": AUTH_CHALLENGE}
        )


def same_origin(request: Request) -> None:
    """A form post from another site (the browser still sends Basic credentials): 403."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site form post refused")
