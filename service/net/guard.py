"""The SSRF guard: URLs reelhook was handed may only reach public addresses, unless an allow-list
names them. One policy (:func:`permitted`), checked on the address actually dialled by both HTTP
clients (see :mod:`service.net.client`), and up front on a URL's literal host (:func:`check_url`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class AddressRefused(OSError):
    """The destination resolves only to addresses reelhook may not connect to."""


def permitted(host: str, allow: Sequence[IPNetwork]) -> bool:
    """Whether a connection may be dialled to ``host``, an address as a resolver returned it."""
    address = ip_literal(host)
    return address is not None and address_allowed(address, allow)


def address_allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    """Public unicast addresses are allowed; private, loopback, link-local (cloud metadata),
    reserved and multicast ones only when an allow-list network contains them."""
    if any(address in network for network in allow):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and (address in _NAT64 or address in _IPV4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(address.packed[-4:])
        if embedded is not None:
            return address_allowed(embedded, allow)
    return address.is_global and not address.is_multicast


URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@:\s]"
"""What :func:`check_url` requires at the least, as a JSON Schema ``pattern``: an http(s) URL
that names a host (its other rules depend on the address and the deployment)."""


def check_url(url: str, allow: Sequence[IPNetwork], *, require_https: bool = False) -> str | None:
    """Why ``url`` can never be a subscriber URL, or None (names are rechecked on connect).
    ``require_https``: plain http is refused too (production's default)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if require_https and parts.scheme != "https":
        # Over plain http every event, its metadata and its signature can be read on the way.
        return (
            "must be an https URL in production (plain http can be read on the way); "
            "set REELHOOK_ALLOW_HTTP_SUBSCRIBERS=true to accept http"
        )
    if parts.username or parts.password:
        return "must not carry credentials; use headers instead"
    # Normalise the host as the HTTP client will: yarl turns e.g. ideographic full stops into dots.
    host = (URL(url).host or parts.hostname).rstrip(".").lower()
    address = ip_literal(host)
    if address is None and host.replace(".", "").isdigit():
        # 127.1 or 2130706433: shorthand some resolvers read as 127.0.0.1; never a real name.
        return "is not a valid IP address or host name"
    if address is None and host in ("localhost", "localhost.localdomain"):
        address = ipaddress.ip_address("127.0.0.1")
    if address is not None and not address_allowed(address, allow):
        network = f"{address}/{32 if address.version == 4 else 128}"
        return (
            f"points to {address}, a private or reserved address; to deliver there, set "
            f"REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS={network} (a comma-separated CIDR list)"
        )
    return None


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def guarded_socket_factory(allow: Sequence[IPNetwork]) -> Callable[[AddrInfo], socket.socket]:
    """An aiohttp ``socket_factory`` that refuses to open a socket to a refused address.

    It sees the address actually dialled, after every spelling of the host has been normalised and
    resolved, so neither DNS rebinding nor an unusual IP spelling can reach an internal service.
    """
    allowed = tuple(allow)

    def open_socket(addr_info: AddrInfo) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        if not permitted(str(sockaddr[0]), allowed):
            raise AddressRefused(f"refused to connect to {sockaddr[0]}: not a public address")
        return socket.socket(family, kind, proto)

    return open_socket
