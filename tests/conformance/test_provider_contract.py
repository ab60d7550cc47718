"""The provider contract over every installed plugin (issue 22; the kit of issue 39).

The checks themselves are the kit's (``tender_kit.contract``), the same a plugin built
outside Tender runs; here they are parametrised over every plugin the
``tender.providers`` entry points install, each against its fake through its real SDK
or HTTP client (``harnesses.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tender_kit import ConformanceSuite, Harness
from tests.conformance.harnesses import HARNESSES

# Tender's own plugins; one installed from elsewhere (examples/tender-mpesa) runs the same
# suite in its own package, with its own harness.
INSTALLED = sorted(
    ep.name
    for ep in entry_points(group="tender.providers")
    if ep.dist is None or ep.dist.name == "tender"
)


class TestInstalledProviders(ConformanceSuite):
    status_docs = Path(__file__).resolve().parents[2] / "docs" / "providers.md"

    @pytest.fixture(params=INSTALLED)
    def harness(  # type: ignore[override]
        self, request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str
    ) -> Iterator[Harness]:
        built = HARNESSES[request.param](tmp_path)
        yield built
        close = getattr(built, "close", None)
        if close is not None:
            close()


def test_every_installed_provider_has_a_harness() -> None:
    assert set(INSTALLED) <= set(HARNESSES), "add a harness in tests/conformance/harnesses.py"
    assert {"sandbox", "paystack"} <= set(INSTALLED)
