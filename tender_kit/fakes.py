"""What every provider fake shares (issue 39: exported for plugin authors): an HTTP server
on a free loopback port, run on a daemon thread, started and stopped by the test (or as a
context manager), and fault switches every fake built on it answers to:

* ``fault_status = 503``: every request answered with that status (a 5xx before acting);
* ``fault_hold_s = 2.0``: every answer held that long (a client timeout, a slow check);
* ``fault_drop = True``: the connection closed without an answer;
* ``fault_rate_limit = True``: 429 (with ``Retry-After`` when ``retry_after_s`` is set);
* ``fault_echo_key = True``: error bodies carry the request's ``Authorization`` header
  back, as careless APIs do, so a plugin's redaction of its keys in errors is tested.

(Prefixed ``fault_`` so that a fake's own state, such as a ``slow_s`` for one endpoint,
never collides with them.)

A fake subclasses :class:`LoopbackFake` (its state and ``handler()``) and
:class:`JsonHandler` (``serve(method)``); see ``docs/writing-a-plugin.md``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietServer(ThreadingHTTPServer):
    """A threading server whose handlers reach their fake as ``self.server.fake``."""

    daemon_threads = True
    fake: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up is not an error worth printing."""


class LoopbackFake:
    """Lifecycle of a fake: ``start`` on 127.0.0.1 (a free port), ``stop``, ``base_url``.
    Subclasses call ``super().__init__()`` and name their request handler."""

    thread_name = "fake-provider"

    def __init__(self) -> None:
        self._stopping = threading.Event()  # set on stop: a held ("slow") answer gives up
        self._server: QuietServer | None = None
        # A probe: when set, every 429 carries ``Retry-After`` (RFC 9110 section 10.2.3),
        # so a plugin that declares it passes hints on is held to it, and one that does
        # not is seen inventing none (tests/conformance).
        self.retry_after_s: int | None = None
        # the fault switches (module docstring); off by default
        self.fault_status: int | None = None
        self.fault_hold_s: float = 0.0
        self.fault_drop = False
        self.fault_rate_limit = False
        self.fault_echo_key = False

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        server = QuietServer(("127.0.0.1", 0), self.handler())
        server.fake = self
        self._server = server
        threading.Thread(target=server.serve_forever, name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"


class JsonHandler(BaseHTTPRequestHandler):
    """A fake's request handler: silent (tests read the fake's own request log), GET and
    POST both to :meth:`serve`, and JSON answers that survive a client that gave up."""

    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""

    def do_GET(self) -> None:
        if not self.faulted():
            self.serve("GET")

    def do_POST(self) -> None:
        if not self.faulted():
            self.serve("POST")

    def faulted(self) -> bool:
        """Apply the fake's fault switches; True when one answered (or dropped) the call."""
        fake = getattr(self.server, "fake", None)
        if fake is None:
            return False
        if getattr(fake, "fault_hold_s", 0.0):
            fake._stopping.wait(fake.fault_hold_s)
        if getattr(fake, "fault_drop", False):
            self.close_connection = True
            return True
        limited = getattr(fake, "fault_rate_limit", False)
        status = 429 if limited else getattr(fake, "fault_status", None)
        if status is None:
            return False
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body: dict[str, Any] = {"error": "fault switched on in the fake", "status": status}
        if getattr(fake, "fault_echo_key", False):
            body["authorization"] = self.headers.get("Authorization", "")
        self.send_json(status, json.dumps(body).encode())
        return True

    def serve(self, method: str) -> None:
        raise NotImplementedError

    def send_json(
        self,
        status: int,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        hint = getattr(getattr(self.server, "fake", None), "retry_after_s", None)
        if status == 429 and hint is not None and "Retry-After" not in (headers or {}):
            headers = {**(headers or {}), "Retry-After": str(hint)}
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
