"""The operator console (``/admin``): see :mod:`surfaces.http.console.routes`."""

from surfaces.http.console.routes import CONSOLE_CSP, console_router, sign_in_redirect
from surfaces.http.console.session import SignInRequired

__all__ = ["CONSOLE_CSP", "SignInRequired", "console_router", "sign_in_redirect"]
