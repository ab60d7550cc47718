"""The catalogue of plugin classes: the ``tender.providers`` entry points plus in-code ones.

A third-party package adds a provider by declaring, in its own pyproject::

    [project.entry-points."tender.providers"]
    acme = "acme_tender:AcmeProvider"
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import entry_points

from providers.base import PaymentProvider
from registry.errors import RegistryError, UnknownPlugin

ENTRY_POINT_GROUP = "tender.providers"
log = logging.getLogger(__name__)


class Catalogue:
    """Plugin classes by name. Entry points load lazily, once."""

    def __init__(self) -> None:
        self._classes: dict[str, type[PaymentProvider]] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def _load_entry_points(self) -> None:
        with self._lock:
            if self._loaded:
                return
            for entry in entry_points(group=ENTRY_POINT_GROUP):
                if entry.name in self._classes:
                    continue
                try:
                    plugin = entry.load()
                except Exception:  # a broken third-party plugin must not take Tender down
                    log.exception("cannot load provider plugin %r (%s)", entry.name, entry.value)
                    continue
                self._classes[entry.name] = plugin
            self._loaded = True

    def register(self, name: str, plugin: type[PaymentProvider]) -> None:
        """Add a plugin class in code (tests, applications embedding Tender)."""
        if not (isinstance(plugin, type) and issubclass(plugin, PaymentProvider)):
            raise RegistryError(
                f"plugin {name!r} must be a PaymentProvider subclass, not {plugin!r}"
            )
        if getattr(plugin, "name", None) != name:
            raise RegistryError(
                f"plugin class {plugin.__name__} is named {plugin.name!r}, not {name!r}"
            )
        self._load_entry_points()
        with self._lock:
            self._classes[name] = plugin

    def get(self, name: str) -> type[PaymentProvider]:
        self._load_entry_points()
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            raise UnknownPlugin(f"unknown plugin {name!r}; known plugins: {known}") from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._classes)


catalogue = Catalogue()
