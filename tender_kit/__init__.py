"""Tender's kit for provider plugins built outside the core (issue 39).

* :class:`ConformanceSuite` (``tender_kit.contract``): every contract check, as a test
  class a plugin's tests subclass with their :class:`Harness`; ``pytest
  --tender-conformance`` runs it (the ``pytest11`` entry point ``tender_kit``).
* :class:`Harness` (``tender_kit.harness``): how the suite drives a plugin and its fake.
* ``tender_kit.inline.InlineTender`` (the ``tender_inline`` fixture): Tender's own
  processor and webhook receiver driving the installed plugin, inline on SQLite.
* ``tender_kit.fakes``: the loopback server every fake of Tender's is built on, with
  fault switches (5xx, slow, drop, 429, a key echoed back).

``docs/writing-a-plugin.md`` goes from nothing to a passing suite.
"""

from tender_kit.contract import ConformanceSuite
from tender_kit.harness import Fault, Harness, Outcome

__all__ = ["ConformanceSuite", "Fault", "Harness", "Outcome"]
