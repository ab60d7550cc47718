"""The catalogue of plugin classes: the ``tender.providers`` entry points plus in-code ones.

A third-party package adds a provider by declaring, in its own pyproject::

    [project.entry-points."tender.providers"]
    acme = "acme_tender:AcmeProvider"
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import EntryPoint, entry_points

from providers.base import PaymentProvider
from registry.errors import RegistryError, UnknownPlugin

ENTRY_POINT_GROUP = "tender.providers"
log = logging.getLogger(__name__)


class Catalogue:
    """Plugin classes by name. Entry points are listed once and each plugin's module is
    imported only when that plugin is first used (an unused SDK costs no memory)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[PaymentProvider]] = {}
        self._entry_points: dict[str, EntryPoint] = {}
        self._listed = False
        self._lock = threading.Lock()

    def _list_entry_points(self) -> None:
        if self._listed:
            return
        with self._lock:
            if not self._listed:
                for entry in entry_points(group=ENTRY_POINT_GROUP):
                    self._entry_points.setdefault(entry.name, entry)
                self._listed = True

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
        with self._lock:
            self._classes[name] = plugin

    def get(self, name: str) -> type[PaymentProvider]:
        plugin = self._classes.get(name)
        if plugin is not None:
            return plugin
        self._list_entry_points()
        with self._lock:
            if name in self._classes:
                return self._classes[name]
            entry = self._entry_points.get(name)
            if entry is not None:
                try:
                    loaded = entry.load()
                except Exception:  # a broken third-party plugin must not take Tender down
                    log.exception("cannot load provider plugin %r (%s)", entry.name, entry.value)
                    del self._entry_points[name]
                else:
                    self._classes[name] = loaded
                    return loaded
        known = ", ".join(self.names()) or "none"
        raise UnknownPlugin(f"unknown plugin {name!r}; known plugins: {known}")

    def names(self) -> list[str]:
        self._list_entry_points()
        return sorted(set(self._classes) | set(self._entry_points))


catalogue = Catalogue()
