"""Text the database cannot hold: PostgreSQL refuses a NUL character in any text or JSON
value, so every boundary (registry writes, payment requests) refuses it first, naming the
field, instead of failing halfway through a transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PG_INTEGER_MAX = 2**31 - 1  # an INTEGER column (priority, weight)


def field_with_nul(value: Any, where: str) -> str | None:
    """The dotted path (starting at ``where``) of the first text holding a NUL, or None."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = field_with_nul(str(key), f"{where}.(key)") or field_with_nul(
                item, f"{where}.{key}"
            )
            if found:
                return found.replace("\x00", "")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = field_with_nul(item, f"{where}[{index}]")
            if found:
                return found
    return None
