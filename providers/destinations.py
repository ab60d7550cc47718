"""Where a plugin may send its keys: the address fields of a config, checked before use.

A provider's address is part of its identity. A plugin's config model names the fields
that decide where requests (and so the secret keys in them) go
(:attr:`ProviderConfig.destination_fields`), and the plugin class names its provider's
official API hosts (:attr:`PaymentProvider.api_hosts`). In production only those hosts,
over https, are allowed; elsewhere any host is (tests point plugins at local fakes), but
never a link-local or cloud-metadata address, from which a key or a credential could be
read back or stolen.

Hostnames are checked as written, not resolved: a name that resolves to a metadata address
is stopped in production by the allow-list, and outside production by the network.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

# Cloud metadata services reached by name or by an address outside 169.254.0.0/16.
METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "metadata.azure"}
)
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
)


class UnsafeDestination(ValueError):
    """An address a plugin must not send its keys to."""


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` names literally, in any form the C resolver accepts
    (``169.254.169.254``, ``2852039166``, ``0xa9fea9fe``, ``[::ffff:169.254.169.254]``)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_destination(url: str, *, api_hosts: Iterable[str], production: bool) -> None:
    """Refuse (UnsafeDestination, saying why) an address the keys must not be sent to."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise UnsafeDestination("must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeDestination("must not carry credentials")
    address = _literal_address(host)
    if host in METADATA_HOSTS or (
        address is not None
        and (
            address.is_link_local
            or address.is_multicast
            or address.is_unspecified
            or address in METADATA_ADDRESSES
        )
    ):
        raise UnsafeDestination(f"{host} is a link-local or metadata address")
    if production:
        allowed = sorted(api_hosts)
        if parts.scheme != "https" or host not in allowed:
            raise UnsafeDestination(
                "in production this provider is reached only at "
                + (", ".join(f"https://{h}" for h in allowed) or "its built-in address")
            )
