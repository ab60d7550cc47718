"""How ``tender api`` serves the app: uvicorn's options, and a deadline on request headers.

uvicorn has no header-read timeout: a client that sends half a request line and waits
held its connection (and a file descriptor) for at least 60 s in a probe, and enough of
them stopped the API. :class:`HeaderDeadline` closes a connection whose first request's
headers are not complete ``api_header_timeout_s`` after it opened; later requests on a
kept-alive connection are bounded by uvicorn's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from config.settings import Settings


class HeaderDeadline(H11Protocol):
    """h11 that closes a connection whose request headers are late (see the module)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None:  # a request's headers arrived: its deadline is met
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for ``tender api``: forwarded headers only from the configured
    proxies, a cap on connections (503 past it), idle keep-alive connections closed after
    5 s, and request headers due within ``api_header_timeout_s``."""
    protocol = type(
        "TenderH11", (HeaderDeadline,), {"header_timeout_s": settings.api_header_timeout_s}
    )
    return {
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None,
        "limit_concurrency": settings.api_max_connections,
        "timeout_keep_alive": 5,
        "http": protocol,
    }
