"""The kit's pytest plugin (entry point ``pytest11: tender_kit``): the Tender environment a
conformance run needs, and ``--tender-conformance`` to run only the contract."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tender_kit.inline import InlineTender


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tender-conformance",
        action="store_true",
        help="run only the provider contract (tender_kit.ConformanceSuite subclasses)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tender_structural: a contract check that reads the plugin's class only"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--tender-conformance"):
        return
    from tender_kit.contract import ConformanceSuite

    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        owner = getattr(item, "cls", None)
        (kept if owner is not None and issubclass(owner, ConformanceSuite) else dropped).append(
            item
        )
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def isolate(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Test settings with data under ``data_dir``, and no TENDER_ variable of the caller's
    (TENDER_TEST_ ones excepted): what every Tender test environment starts from."""
    for name in list(os.environ):
        if name.startswith("TENDER_") and not name.startswith("TENDER_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TENDER_ENV", "test")
    monkeypatch.setenv("TENDER_DATA_DIR", str(data_dir))


@pytest.fixture
def tender_kit_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Tender environment of its own under ``tmp_path`` (a plugin's checks must not
    reach real services)."""
    from config.settings import reset_settings

    isolate(monkeypatch, tmp_path / "tender-data")
    reset_settings()
    yield tmp_path
    monkeypatch.undo()
    reset_settings()


@pytest.fixture
def tender_inline(tender_kit_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InlineTender]:
    """Tender run inline on a fresh SQLite database under ``tmp_path``: its processor and
    webhook receiver drive the installed plugin (``tender_kit.inline.InlineTender``)."""
    from config.settings import reset_settings
    from registry.migrate import upgrade
    from tender_kit.inline import InlineTender  # imported late: plain pytest runs stay light
    from workers import runtime

    url = f"sqlite:///{tender_kit_env / 'tender.db'}"
    monkeypatch.setenv("TENDER_DATABASE_URL", url)
    reset_settings()
    upgrade(url)
    runtime.reset()
    yield InlineTender()
    runtime.reset()
