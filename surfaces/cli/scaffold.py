"""``tender plugins new NAME``: a provider plugin as a package of its own (issue 39).

The scaffold is the smallest package the kit (``tender_kit``) can run: the plugin class
with its config model and an empty lifecycle row to replace, the ``tender.providers``
entry point, a fake server skeleton on the kit's loopback server, the harness and the
conformance suite, and a README with the order to fill them in. As generated it passes
the kit's structural checks (``pytest -m tender_structural``) and fails the behavioural
ones, each with ``NotImplementedError`` naming what to write.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

_NAME = re.compile(r"[a-z][a-z0-9_]{1,30}", re.ASCII)


class ScaffoldError(ValueError):
    """A name or place the scaffold refuses."""


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def scaffold(name: str, parent: Path) -> list[Path]:
    """Write the package ``tender-<name>`` under ``parent``; the files written."""
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"{name!r}: a plugin name is 2 to 31 of a-z, 0-9 and '_', starting with a letter"
        )
    root = parent / f"tender-{name.replace('_', '-')}"
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or place")
    package = f"tender_{name}"
    cls = _camel(name)
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": '"""The {name} provider plugin for Tender."""\n',
        f"{package}/plugin.py": PLUGIN,
        "tests/__init__.py": "",
        "tests/fake.py": FAKE,
        "tests/test_conformance.py": CONFORMANCE,
        "tests/test_through_tender.py": THROUGH_TENDER,
    }
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, package=package, cls=cls))
        written.append(path)
    return written


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "tender-{name}"
version = "0.1.0"
description = "The {name} payment provider for Tender"
requires-python = ">=3.11"
dependencies = ["tender", "httpx>=0.27,<1"]

[project.optional-dependencies]
dev = ["pytest>=8,<10"]

[project.entry-points."tender.providers"]
{name} = "{package}.plugin:{cls}Provider"

[tool.setuptools.packages.find]
include = ["{package}*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# tender-{name}

The {name} payment provider as a Tender plugin, tested with Tender's kit.

In this order (docs/writing-a-plugin.md in Tender says why):

1. Read the provider's API reference. Write down, with links, its payment statuses, its
   amounts' units per currency, its error bodies and its webhook signature.
2. Teach the fake (`tests/fake.py`) those paths and shapes, from the documentation.
3. Fill in the harness (`tests/test_conformance.py`): a config that reaches the fake,
   requests the provider answers each way, the provider's own books, a signed webhook.
4. Write the plugin (`{package}/plugin.py`) until the suite passes:

       pip install -e ".[dev]"
       pytest --tender-conformance                 # every contract check
       pytest --tender-conformance -m tender_structural   # what the scaffold passes as is

5. Run it through Tender itself (`tests/test_through_tender.py`: the kit's `tender_inline`
   fixture, Tender's processor and webhook receiver inline on SQLite) once installed
   (`pip install -e .` registers its entry point), and add your provider's lifecycles:

       pytest

Where the provider cannot do what a card API does (no success in the charge's answer, no
idempotency key, unsigned webhooks, no refund call), declare it in `capabilities`, and the
suite holds the plugin to the safe alternative ("When the provider is not like a card
API" in docs/writing-a-plugin.md; Tender's `examples/tender-mpesa` is one).
"""

PLUGIN = '''\
"""The {name} provider for Tender. Every method says what the provider must do; the kit's
contract (``pytest --tender-conformance``) checks each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import SecretStr

from providers.base import (
    Capability,
    HealthCheck,
    Lifecycle,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
    Stage,
    WebhookEvent,
)

# Replace with the provider's own pages: one row per payment status it documents.
_DOCS = "https://developer.example.com/{name}/payments"


class {cls}Config(ProviderConfig):
    secret_key: SecretStr
    base_url: str = "https://api.example.com"
    timeout_s: float = 10.0


class {cls}Provider(PaymentProvider):
    name: ClassVar[str] = "{name}"
    display_name: ClassVar[str] = "{cls}"
    supported_currencies: ClassVar[frozenset[str]] = frozenset({{"KES"}})
    config_model: ClassVar[type[ProviderConfig]] = {cls}Config
    api_hosts: ClassVar[frozenset[str]] = frozenset({{"api.example.com"}})
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    lifecycle: ClassVar[Lifecycle] = Lifecycle(
        (Stage("succeeded", OutcomeStatus.SUCCEEDED, _DOCS),)
    )

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        raise NotImplementedError("charge once under request.reference; map errors to providers.errors")

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        raise NotImplementedError("read the payment by provider_id, else by reference; never create")

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        raise NotImplementedError("refund all or part, once per refund_key")

    async def health_check(self) -> HealthCheck:
        raise NotImplementedError("a cheap call that proves the provider answers and takes the key")

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        raise NotImplementedError("verify the signature over raw_body first, then parse")
'''

FAKE = '''\
"""A fake {name} API on a loopback port, built from the provider's published API reference
(cite the page for each path and shape). The kit's fault switches come with it:
fault_status, fault_hold_s, fault_drop, fault_rate_limit, fault_echo_key
(tender_kit.fakes)."""

from __future__ import annotations

import json

from tender_kit.fakes import JsonHandler, LoopbackFake


class Fake{cls}(LoopbackFake):
    def __init__(self) -> None:
        super().__init__()
        self.charges: dict[str, dict[str, object]] = {{}}  # the provider's own books

    def handler(self) -> type[JsonHandler]:
        return _Handler


class _Handler(JsonHandler):
    def serve(self, method: str) -> None:
        # Route the provider's real paths here, e.g. POST /v1/charges, GET /v1/charges/<id>.
        self.send_json(404, json.dumps({{"error": f"{{method}} {{self.path}}: not in the fake yet"}}).encode())
'''

CONFORMANCE = '''\
"""The {name} plugin against Tender's contract (``pytest --tender-conformance``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from providers.base import PaymentProvider, PaymentRequest
from tender_kit import ConformanceSuite, Fault, Harness, Outcome
from tender_kit.harness import TIMEOUT_S
from tender_{name}.plugin import {cls}Provider
from tests.fake import Fake{cls}


class {cls}Harness(Harness):
    plugin_class = {cls}Provider
    currency = "KES"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.fake = Fake{cls}().start()

    def close(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {{
            "secret_key": "sk_test_conformance_0123456789",
            "base_url": self.fake.base_url,
            "timeout_s": TIMEOUT_S,
        }}

    def request(self, outcome: Outcome, amount_minor: int = 50_000) -> PaymentRequest:
        raise NotImplementedError("a request the fake answers with `outcome`")

    def charges(self, reference: str) -> int:
        raise NotImplementedError("how many charges the fake's books hold for `reference`")

    def webhook(self, reference: str, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
        raise NotImplementedError("a payment-success webhook, signed as the provider signs it")

    @contextlib.contextmanager
    def fault(self, kind: Fault) -> Iterator[PaymentProvider]:
        raise NotImplementedError("switch the fault on in the fake, yield the plugin")
        yield self.plugin()  # pragma: no cover


class Test{cls}(ConformanceSuite):
    harness_class = {cls}Harness
'''

THROUGH_TENDER = '''\
"""The plugin run through Tender itself (the kit's ``tender_inline`` fixture): Tender's
own processor and webhook receiver, inline on SQLite, finding the plugin by its entry
point. Fails until the plugin is written; add the provider's own lifecycles here."""

from __future__ import annotations

from pathlib import Path

from tender_kit.inline import InlineTender
from tests.test_conformance import {cls}Harness


def test_a_payment_through_tender(tender_inline: InlineTender, tender_kit_env: Path) -> None:
    harness = {cls}Harness(tender_kit_env)
    try:
        tender_inline.add_instance("{name}", harness.config(), currencies=[harness.currency])
        payment = tender_inline.pay("ord-1", "500.00", harness.currency)
        assert payment.status == "succeeded"
        assert tender_inline.process(payment.id).status == "succeeded"  # a redelivered task
        assert harness.charges(payment.provider_reference) == 1
    finally:
        harness.close()
'''
