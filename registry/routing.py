"""Routing: a pure function of (instances, request) -> ordered route.

Rules, in order:

1. **Scope.** A tenant with instances of its own is routed only through them
   (they hold that merchant's keys); otherwise through the global instances.
2. **Usable.** Switched on, not in ``error``, circuit closed (not ``unhealthy``),
   and the currency is in the instance's list (empty list: all its plugin supports).
3. **Order.** Lower ``priority`` first. Among equal priority, a weighted
   rendezvous hash of the idempotency key spreads payments by ``weight`` and
   keeps a payment's order stable across retries.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable

from registry.instances import InstanceView


def in_scope(
    instances: Iterable[InstanceView], tenant_id: str | None, provider_type: str
) -> list[InstanceView]:
    typed = [i for i in instances if i.provider_type == provider_type]
    own = [i for i in typed if tenant_id is not None and i.tenant_id == tenant_id]
    return own or [i for i in typed if i.tenant_id is None]


def accepts(instance: InstanceView, currency: str, supports: Callable[[str, str], bool]) -> bool:
    if instance.currencies and currency not in instance.currencies:
        return False
    return supports(instance.plugin_name, currency)


def _rendezvous_score(key: str, instance: InstanceView) -> float:
    digest = hashlib.blake2b(f"{key}\x1f{instance.id}".encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -math.log(uniform) / max(instance.weight, 1)


def resolve_route(
    instances: Iterable[InstanceView],
    *,
    tenant_id: str | None,
    currency: str,
    idempotency_key: str,
    supports: Callable[[str, str], bool],
    provider_type: str = "payment",
) -> list[InstanceView]:
    """The instances to try for this payment, primary first. Empty: no route."""
    usable = [
        i
        for i in in_scope(instances, tenant_id, provider_type)
        if i.routable and accepts(i, currency, supports)
    ]
    return sorted(usable, key=lambda i: (i.priority, _rendezvous_score(idempotency_key, i)))
