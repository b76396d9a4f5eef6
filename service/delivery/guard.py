"""SSRF guard: subscriber URLs may only reach public addresses, unless an allow-list names them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(OSError):
    """The destination resolves only to addresses subscribers may not use."""


def address_allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    """Public unicast addresses are allowed; private, loopback, link-local (cloud metadata),
    reserved and multicast ones only when an allow-list network contains them."""
    if any(address in network for network in allow):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            return address_allowed(embedded, allow)
    return address.is_global and not address.is_multicast


def check_url(url: str, allow: Sequence[IPNetwork]) -> str | None:
    """Why ``url`` can never be a subscriber URL, or None (names are rechecked on connect)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username or parts.password:
        return "must not carry credentials; use headers instead"
    host = parts.hostname.rstrip(".").lower()
    address = ip_literal(host)
    if address is None and host in ("localhost", "localhost.localdomain"):
        address = ipaddress.ip_address("127.0.0.1")
    if address is not None and not address_allowed(address, allow):
        return f"points to {address}, a private or reserved address"
    return None


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolves names like aiohttp's threaded resolver, then drops refused addresses.

    The addresses checked are the ones the connector dials, so DNS rebinding between a check and
    the connection cannot reach an internal service.
    """

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._allow = tuple(allow)
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [
            r for r in results if address_allowed(ipaddress.ip_address(r["host"]), self._allow)
        ]
        if not allowed:
            raise AddressRefused(f"{host} resolves only to private or reserved addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
