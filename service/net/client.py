"""An httpx client for fetching files from URLs reelhook was handed, behind the SSRF guard.

Provider callbacks name the URLs of finished videos; reelhook downloads them. The guard from
:mod:`service.delivery.guard` is applied where it cannot be dodged: to each address actually
dialled, after the host name is resolved, on every connection (redirects included). So neither a
private IP spelled oddly, nor DNS rebinding, nor a redirect reaches an internal service, unless an
allow-list network names it.
"""

from __future__ import annotations

import socket
import ssl
import typing
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from service.net.guard import IPNetwork, address_allowed, ip_literal

USER_AGENT = "reelhook/0.1.0"


class ConnectionRefused(httpcore.ConnectError):
    """Every address of the host is one reelhook may not connect to."""


def refused(error: BaseException) -> bool:
    """Whether an httpx error comes from the guard refusing the destination."""
    return isinstance(error.__cause__, ConnectionRefused)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself and connects only to allowed addresses, trying each in turn.

    ``trusted`` names (host, port) origins reached without the check: reelhook's own public
    address, when its in-process simulator serves the files.
    """

    def __init__(self, allow: Sequence[IPNetwork], trusted: Iterable[tuple[str, int]] = ()) -> None:
        self._allow = tuple(allow)
        self._trusted = frozenset(trusted)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if (host.lower(), port) in self._trusted:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            with anyio.fail_after(timeout):
                found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = []
        for *_, sockaddr in found:
            address = ip_literal(str(sockaddr[0]))
            if address is not None and address_allowed(address, self._allow):
                addresses.append(str(address))
        if not addresses:
            shown = ", ".join(sorted({str(s[0]) for *_, s in found}))
            raise ConnectionRefused(f"refused to connect to {host} ({shown}): not a public address")
        last: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for allowed in addresses:
            try:
                return await self._inner.connect_tcp(
                    allowed, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ConnectionRefused("unix sockets are never reachable from a provider's URL")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def guarded_client(
    allow: Sequence[IPNetwork],
    *,
    ssl_context: ssl.SSLContext,
    trusted: Iterable[tuple[str, int]] = (),
    timeout: httpx.Timeout,
    max_redirects: int = 5,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every connection passes the SSRF guard.

    It ignores proxy settings from the environment (a proxy would be the only address checked)
    and follows at most ``max_redirects`` redirects, each to a checked address. ``ssl_context``
    is taken as given (building one costs tens of milliseconds, so the app shares one).
    """
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False)
    # httpx offers no way to choose the network backend, so its pool is rebuilt with the guarded
    # one; every other option keeps httpx's default.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GuardedBackend(allow, trusted),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=True,
        max_redirects=max_redirects,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def origin_of(url: str) -> tuple[str, int]:
    """(host, port) of ``url`` as a connection to it dials them."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.hostname or "").lower(), port
