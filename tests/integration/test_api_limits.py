"""A real API process keeps its memory while strangers post huge bodies (issue 21, finding 2).

The probe posted 450 MB to /instances without a token (the API grew to 1.5 GB before
answering 401) and 300 MB as an unsigned webhook (732 MB). Here the same bodies stream
into a real uvicorn process, which must refuse them as they arrive.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.migrate import upgrade

pytestmark = pytest.mark.integration

CHUNK = b"z" * (1024 * 1024)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[tuple[str, int]]:
    url = f"sqlite:///{tmp_path / 'tender.db'}"
    upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENDER_") or "TEST" in k} | {
        "TENDER_ENV": "test",
        "TENDER_DATA_DIR": str(tmp_path),
        "TENDER_DATABASE_URL": url,
        "TENDER_API_TOKEN": "t0ken",
    }
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "surfaces.http.app:create_app", "--factory"),
            *("--port", str(port), "--log-level", "warning"),
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the API did not start")
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def post_streaming(url: str, megabytes: int, *, declare: bool) -> int | None:
    """POST ``megabytes`` of body; the status, or None if the server cut us off."""

    def body() -> Iterator[bytes]:
        for _ in range(megabytes):
            yield CHUNK

    headers = {"content-length": str(megabytes * len(CHUNK))} if declare else {}
    try:
        return httpx.post(url, content=body(), headers=headers, timeout=60).status_code
    except httpx.TransportError:  # refused mid-stream: the server closed the connection
        return None


def test_huge_bodies_from_strangers_do_not_grow_the_api(api_process: tuple[str, int]) -> None:
    base, pid = api_process
    httpx.get(f"{base}/instances", headers={"Authorization": "Bearer t0ken"})  # warm up
    before_kb = peak_rss_kb(pid)
    assert post_streaming(f"{base}/instances", 450, declare=True) == 413
    assert post_streaming(f"{base}/instances", 450, declare=False) in (413, None)
    assert post_streaming(f"{base}/webhooks/paystack", 300, declare=False) in (413, None)
    grown_mb = (peak_rss_kb(pid) - before_kb) / 1024
    assert grown_mb < 32, f"the API's peak memory grew by {grown_mb:.0f} MB"
    assert httpx.get(f"{base}/healthz").status_code == 200
