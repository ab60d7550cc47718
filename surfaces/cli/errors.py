"""What an operator can fix, said in one line: no traceback, no SQL, no customer data.

Every ``tender`` command runs inside :class:`OperatorErrors`: a database that cannot be
reached, a database without Tender's schema, an unreachable broker, a bad setting or a
refused input ends the command with one red line naming the setting and the fix, and exit
status 1. ``tender --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from config.settings import SettingsError

err = Console(stderr=True)
_debug = {"on": False}

# SQLSTATEs of a schema that is missing or older than the code (PostgreSQL).
_SCHEMA_STATES = frozenset({"42P01", "42703"})  # undefined table, undefined column


def set_debug(on: bool) -> None:
    _debug["on"] = on


def print_error(message: str) -> None:
    """One red line; the message is printed as text (``[paystack]`` stays visible)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _where(url: str | None) -> str:
    from sqlalchemy.engine import make_url

    if not url:
        return "(unset)"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unreadable URL)"


def describe(exc: BaseException) -> str | None:
    """The operator's one line for ``exc``, or None for an error Tender did not foresee."""
    from kombu.exceptions import OperationalError as BrokerUnreachable
    from sqlalchemy.exc import DBAPIError

    from config.settings import SettingsError, get_settings
    from providers.errors import ProviderError
    from registry.errors import RegistryError

    if isinstance(exc, SettingsError | RegistryError | ProviderError):
        return str(exc)
    if isinstance(exc, DBAPIError):
        try:
            url = _where(get_settings().resolved_database_url)
        except SettingsError as bad:
            return str(bad)
        original = exc.orig
        if getattr(original, "sqlstate", None) in _SCHEMA_STATES or "no such table" in str(
            original
        ):
            return f"the database at {url} has no Tender schema, or an old one: run `tender db upgrade`"
        if exc.connection_invalidated or type(exc).__name__ == "OperationalError":
            return (
                f"cannot use the database at {url} (TENDER_DATABASE_URL): "
                f"{_first_line(original)}; is it running and reachable?"
            )
        return f"the database at {url} refused a statement ({type(original).__name__}); see --debug"
    if isinstance(exc, BrokerUnreachable | ConnectionError):
        try:
            broker = _where(get_settings().broker_url) if get_settings().broker_url else "embedded"
        except SettingsError as bad:
            return str(bad)
        return (
            f"cannot reach the broker at {broker} (TENDER_BROKER_URL): {_first_line(exc)}; "
            "is it running and reachable?"
        )
    return None


class OperatorErrors(TyperGroup):
    """The root command group: every command's foreseen failures as one line."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors its own click)
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # Exits, aborts and usage errors belong to the command-line library.
            if _debug["on"] or type(exc).__module__.startswith(("typer", "click")):
                raise
            line = describe(exc)
            if line is None:
                line = f"unexpected {type(exc).__name__}; run `tender --debug ...` to see where"
            print_error(line)
            raise typer.Exit(1) from None


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn Tender's bad-input errors into one red line and exit 1 (no traceback)."""
    from providers.errors import ProviderError
    from registry.errors import RegistryError
    from workers.payments.client import PaymentNotFound

    try:
        yield
    except (SettingsError, RegistryError, ProviderError, PaymentNotFound, ValueError) as exc:
        fail(str(exc))


def cli_actor() -> str:
    """The audit trail's name for changes made from this command line."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
