"""One classification of outbound network failures, whichever client raised them.

reelhook calls out with httpx (providers, output downloads) and aiohttp (deliveries; see
:mod:`service.net.client`). Every caller asks :func:`classify` what went wrong and decides from
the answer: whether the peer can have seen the request (safe to send again even where sending
twice would charge twice), whether it was slowness, whether it may pass.
"""

from __future__ import annotations

import os
from enum import StrEnum

import aiohttp
import httpx

from service.net.guard import AddressRefused


class NetworkFailure(StrEnum):
    INVALID_URL = "invalid_url"  # the URL cannot be requested at all
    REFUSED = "refused"  # the SSRF guard refused every address of the host
    UNREACHABLE = "unreachable"  # no connection (name unknown, refused, reset while connecting)
    CONNECT_TIMEOUT = "connect_timeout"  # no connection in time
    TIMEOUT = "timeout"  # the request went out; no (complete) answer in time
    BROKEN = "broken"  # the request went out; the connection failed or spoke nonsense
    OTHER = "other"  # the exchange failed otherwise (too many redirects, an undecodable body)

    @property
    def unsent(self) -> bool:
        """The peer never saw the request."""
        return self in _UNSENT

    @property
    def timed_out(self) -> bool:
        return self in (NetworkFailure.CONNECT_TIMEOUT, NetworkFailure.TIMEOUT)

    @property
    def transient(self) -> bool:
        """Trying again later may succeed."""
        return self in _TRANSIENT


_UNSENT = frozenset(
    {
        NetworkFailure.INVALID_URL,
        NetworkFailure.REFUSED,
        NetworkFailure.UNREACHABLE,
        NetworkFailure.CONNECT_TIMEOUT,
    }
)
_TRANSIENT = frozenset(
    {
        NetworkFailure.UNREACHABLE,
        NetworkFailure.CONNECT_TIMEOUT,
        NetworkFailure.TIMEOUT,
        NetworkFailure.BROKEN,
    }
)

#: The errors the two clients raise for a failed exchange; catch these around an outbound call
#: (with ``TimeoutError`` and ``OSError`` for aiohttp, which lets those through unwrapped).
NETWORK_ERRORS = (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError)


def classify(error: BaseException) -> NetworkFailure:
    """What an error from an outbound call (one of :data:`NETWORK_ERRORS`, or the
    ``TimeoutError`` of a deadline around it) says about the exchange."""
    if _refused_by_guard(error):
        return NetworkFailure.REFUSED
    if isinstance(
        error,
        httpx.InvalidURL
        | httpx.UnsupportedProtocol
        | aiohttp.InvalidURL
        | aiohttp.NonHttpUrlClientError,
    ):
        return NetworkFailure.INVALID_URL
    if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout | aiohttp.ConnectionTimeoutError):
        return NetworkFailure.CONNECT_TIMEOUT
    if isinstance(error, httpx.ConnectError | aiohttp.ClientConnectorError):
        return NetworkFailure.UNREACHABLE
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return NetworkFailure.TIMEOUT
    if isinstance(
        error,
        httpx.NetworkError
        | httpx.RemoteProtocolError
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError
        | OSError,
    ):
        return NetworkFailure.BROKEN
    return NetworkFailure.OTHER


def describe(error: BaseException, limit: int = 300) -> str:
    """What went wrong, in words the owner of the other end can act on (it is shown in the
    delivery log and the job's error), short enough for a stored record; the client's own
    ``Type: message`` only where there are no better words."""
    refusal = _guard_refusal(error)
    if refusal is not None:
        text = f"not sent: {refusal} (REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS can allow it)"
    elif isinstance(error, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        text = "the TLS handshake failed (is the certificate valid for this host?)"
    elif isinstance(error, aiohttp.ClientConnectorDNSError):
        text = f"the host name {error.host!r} did not resolve"
    elif isinstance(error, aiohttp.ClientConnectorError):
        errno = error.os_error.errno
        reason = os.strerror(errno) if errno else type(error.os_error).__name__
        text = f"could not connect to {error.host}:{error.port} ({reason})"
    elif isinstance(error, aiohttp.ServerDisconnectedError):
        text = "the connection was closed without an answer"
    elif isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        text = f"the answer could not be read ({type(error).__name__})"
    else:
        detail = str(error)
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return text[:limit]


def _refused_by_guard(error: BaseException) -> bool:
    return _guard_refusal(error) is not None


def _guard_refusal(error: BaseException) -> AddressRefused | None:
    seen: BaseException | None = error
    for _ in range(5):  # the guard's error is wrapped by the client once or twice
        if seen is None:
            return None
        if isinstance(seen, AddressRefused):
            return seen
        os_error = getattr(seen, "os_error", None)  # aiohttp's ClientOSError keeps it here
        seen = os_error if isinstance(os_error, AddressRefused) else seen.__cause__
    return None
