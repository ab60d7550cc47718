"""Text from a provider made safe to store, log and publish.

Provider and SDK error texts end up in the ledger, events, health rows, logs and every
surface that shows them. A provider may echo part of the key it was sent ("invalid key
...c0ffee42"), with or without its prefix, so masking the whole key is not enough: any
run of :data:`MIN_SECRET_RUN` or more characters that also occurs in one of the
instance's secrets is masked, and so is anything shaped like an API key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASKED = "***"
MIN_SECRET_RUN = 8  # characters: shorter runs are too common to mean a leak
MAX_MESSAGE_CHARS = 300  # a provider's message is a sentence, not a document

_KEY_SHAPES = re.compile(r"\b(?:sk|pk|rk|whsec|FLWSECK|FLWPUBK)[_-][A-Za-z0-9_\-]{6,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every run of 8+ characters found in a secret, and anything shaped
    like an API key, replaced by ``***``."""
    runs = {
        secret[i : i + MIN_SECRET_RUN]
        for secret in secrets
        if len(secret) >= MIN_SECRET_RUN
        for i in range(len(secret) - MIN_SECRET_RUN + 1)
    }
    if runs:
        masked = bytearray(len(text))
        for i in range(len(text) - MIN_SECRET_RUN + 1):
            if text[i : i + MIN_SECRET_RUN] in runs:
                masked[i : i + MIN_SECRET_RUN] = b"\x01" * MIN_SECRET_RUN
        if any(masked):
            # Each maximal masked span becomes one marker.
            text = "".join(
                MASKED if flag and (i == 0 or not masked[i - 1]) else ("" if flag else ch)
                for i, (ch, flag) in enumerate(zip(text, masked, strict=True))
            )
    return _KEY_SHAPES.sub(MASKED, text)


def sanitize(text: str, secrets: Iterable[str] = ()) -> str:
    """A provider's message for the ledger: secrets masked, control characters (line
    breaks, NULs, terminal escapes) collapsed to a space, at most 300 characters."""
    text = _CONTROL.sub(" ", redact(text, secrets)).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text
