"""Errors of the registry's operator surface (bad input: a specific message, nothing written)."""

from __future__ import annotations


class RegistryError(ValueError):
    """An operator request the registry refuses."""


class UnknownPlugin(RegistryError):
    """No plugin class of that name is in the catalogue."""


class WrongProviderType(RegistryError):
    """The plugin exists but is not of the requested provider type."""


class InstanceNotFound(RegistryError, LookupError):
    """No plugin instance with that id."""


class NoRoute(RegistryError):
    """No active, usable instance can take this payment (tenant, currency)."""


class RulesetNotFound(RegistryError, LookupError):
    """No routing ruleset with that id (or not one the caller's tenant may see)."""
