"""reelhook's outbound HTTP: which client makes which call, and the SSRF guard under both.

Two client libraries, each for what it does best:

- **httpx** calls the provider APIs (trusted, configured base URLs; streamed held requests, per
  request timeouts, the metered transport of :mod:`service.ops.instrumentation`) and downloads
  the output videos providers name (:func:`guarded_client`).
- **aiohttp** is the fan-out sender of webhook deliveries (:func:`guarded_session`): measured
  several times cheaper per request than httpx's pool at delivery rates (docs/performance.md).

Every call to a URL reelhook was *handed* (a subscriber's endpoint, a provider's output URL) goes
through the one guard of :mod:`service.net.guard`, installed through each library's public API
where it cannot be dodged: on each address actually dialled, after the host name is resolved, on
every connection (redirects included). httpx gets it as an httpcore network backend under a small
transport of our own (httpx offers no option to choose the backend); aiohttp as its connector's
``socket_factory``. Either way a refusal is an :class:`~service.net.guard.AddressRefused`, and
:mod:`service.net.failures` classifies every failure of either client the same way.
"""

from __future__ import annotations

import socket
import ssl
import typing
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

import aiohttp
import anyio
import httpcore
import httpx

from service.net.guard import AddressRefused, IPNetwork, guarded_socket_factory, permitted

USER_AGENT = "reelhook/0.1.0"


class _Refused(httpcore.ConnectError):
    """The guard refused every address of the host (raised as httpx's ``ConnectError`` caused by
    an :class:`AddressRefused`: httpcore's pool re-raises without the cause)."""


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
        addresses = [str(s[0]) for *_, s in found if permitted(str(s[0]), self._allow)]
        if not addresses:
            shown = ", ".join(sorted({str(s[0]) for *_, s in found}))
            raise _Refused(f"refused to connect to {host} ({shown}): not a public address")
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
        raise _Refused("unix sockets are never reachable from a handed URL")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


# httpcore's errors as httpx raises them (same names, httpx's own classes), most specific first.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except _Refused as exc:
        raise httpx.ConnectError(str(exc)) from AddressRefused(str(exc))
    except Exception as exc:
        for core_error, httpx_error in _ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx requests over an httpcore connection pool that dials through :class:`GuardedBackend`
    (both libraries' public interfaces)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


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
    pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GuardedBackend(allow, trusted),
    )
    return httpx.AsyncClient(
        transport=GuardedTransport(pool),
        timeout=timeout,
        follow_redirects=True,
        max_redirects=max_redirects,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def guarded_session(
    allow: Sequence[IPNetwork], *, timeout: float, concurrency: int
) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` whose every socket passes the SSRF guard (the delivery
    sender's: redirects are the caller's to refuse).

    Its pool holds up to twice ``concurrency`` connections: the dispatcher sends at most
    ``concurrency`` attempts at once, plus as many slow ones that gave their send slot back
    (service.delivery.dispatcher, ``SLOW_AFTER``); a pool of exactly ``concurrency`` would let
    the slow ones hold every connection the healthy ones need."""
    connector = aiohttp.TCPConnector(
        limit=2 * concurrency, ttl_dns_cache=30, socket_factory=guarded_socket_factory(allow)
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": USER_AGENT},
        auto_decompress=False,
    )


def origin_of(url: str) -> tuple[str, int]:
    """(host, port) of ``url`` as a connection to it dials them."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.hostname or "").lower(), port
