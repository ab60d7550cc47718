"""The embedded broker (kombu's filesystem transport, as Tender runs it): a message or a
binding table is never seen half-written, and message files are private (issue 32: a
worker exited on an empty message file; ``tender demo`` failed with "Expecting value")."""

from __future__ import annotations

import multiprocessing
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection

from workers.core import broker_transport
from workers.core.broker_transport import FilesystemTransport

PAYLOAD = {"body": "x" * 200_000}  # big enough that writing it takes many system calls


def options(folder: Path) -> dict[str, Any]:
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


@pytest.fixture
def channels(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A producer's channel and a consumer's, on connections of their own."""
    transport_options = options(tmp_path)
    with (
        Connection(
            "filesystem://", transport=FilesystemTransport, transport_options=transport_options
        ) as a,
        Connection(
            "filesystem://", transport=FilesystemTransport, transport_options=transport_options
        ) as b,
    ):
        yield a.default_channel, b.default_channel


def test_tender_uses_its_own_transport_for_the_embedded_broker() -> None:
    assert broker_transport.for_url("filesystem://") == broker_transport.FILESYSTEM_PATH
    assert broker_transport.for_url("amqp://guest@localhost//") is None


def test_a_consumer_never_takes_a_message_before_it_is_whole(tmp_path: Path) -> None:
    """A producer in another process (as the API or billing is) and a consumer taking
    messages as fast as it can: kombu's own transport hands out most of them empty."""
    transport_options = options(tmp_path)
    count = 200

    def produce() -> None:
        with Connection(
            "filesystem://", transport=FilesystemTransport, transport_options=transport_options
        ) as connection:
            for n in range(count):
                connection.default_channel._put("payments", PAYLOAD | {"n": n})

    producer = multiprocessing.get_context("fork").Process(target=produce)
    taken: list[Any] = []
    errors: list[BaseException] = []
    with Connection(
        "filesystem://", transport=FilesystemTransport, transport_options=transport_options
    ) as connection:
        consumer = connection.default_channel
        producer.start()
        deadline = time.monotonic() + 60
        while len(taken) + len(errors) < count and time.monotonic() < deadline:
            try:
                taken.append(consumer._get("payments"))
            except Empty:
                continue
            except Exception as exc:  # a half-written file: JSONDecodeError
                errors.append(exc)
    producer.join(timeout=60)
    assert errors == []
    assert sorted(message["n"] for message in taken) == list(range(count))
    assert all(message["body"] == PAYLOAD["body"] for message in taken)


def test_a_binding_table_is_never_read_half_written(channels: tuple[Any, Any]) -> None:
    binder, publisher = channels
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_tables() -> None:
        while not stop.is_set():
            try:
                publisher.get_table("tender.events")
            except BaseException as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=read_tables)
    reader.start()
    try:
        for n in range(300):
            binder._queue_bind("tender.events", f"key.{n}", f"key.{n}", f"queue-{n}")
    finally:
        stop.set()
        reader.join(timeout=60)
    assert errors == []
    assert len(publisher.get_table("tender.events")) == 300


def test_messages_and_tables_are_readable_by_their_owner_only(
    channels: tuple[Any, Any], tmp_path: Path
) -> None:
    producer, _ = channels
    producer._put("payments", {"event": "payment.succeeded"})
    producer._queue_bind("tender.events", "payment.*", "payment.*", "billing")
    files = [*(tmp_path / "queue").iterdir(), tmp_path / "control" / "tender.events.exchange"]
    assert files
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_a_taken_message_goes_to_the_brokers_own_folder_not_the_shared_temp(
    channels: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, consumer = channels
    seen: list[str] = []
    real_rename = broker_transport.os.rename

    def rename(source: Any, target: Any) -> None:
        seen.append(str(target))
        real_rename(source, target)

    monkeypatch.setattr(broker_transport.os, "rename", rename)
    producer._put("payments", {"n": 1})
    assert consumer._get("payments") == {"n": 1}
    assert seen and all(path.startswith(str(tmp_path / "processed")) for path in seen)
    assert list((tmp_path / "processed").iterdir()) == []  # read, then removed
