"""Sends one signed delivery over aiohttp and reports what happened, never raising."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from service.delivery import signing
from service.net.guard import AddressRefused, IPNetwork, guarded_socket_factory

RESPONSE_KEEP_BYTES = 20_000
USER_AGENT = "reelhook/0.1.0 (Standard Webhooks)"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    latency_ms: float
    error: str | None = None
    response_body: bytes | None = None
    retry_after: str | None = None
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Signs and posts deliveries through one pooled aiohttp session (see :meth:`session`)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @classmethod
    def session(
        cls, *, allow: Sequence[IPNetwork], timeout: float, concurrency: int
    ) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=concurrency, ttl_dns_cache=30, socket_factory=guarded_socket_factory(allow)
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
        )

    async def send(
        self,
        *,
        url: str,
        event_id: str,
        payload: bytes,
        secrets: list[str],
        headers: dict[str, str],
        timestamp: int,
    ) -> AttemptResult:
        """POST ``payload`` to ``url`` signed with ``secrets``; redirects are not followed."""
        request_headers = {
            **headers,
            "Content-Type": "application/json",
            **signing.headers(secrets, event_id, timestamp, payload),
        }
        started = time.perf_counter()
        try:
            async with self._session.post(
                url, data=payload, headers=request_headers, allow_redirects=False
            ) as response:
                body = await _read_prefix(response.content, RESPONSE_KEEP_BYTES)
                return AttemptResult(
                    response.status,
                    _elapsed_ms(started),
                    error=None if 200 <= response.status < 300 else f"HTTP {response.status}",
                    response_body=body,
                    retry_after=response.headers.get("Retry-After"),
                )
        except TimeoutError:
            return AttemptResult(None, _elapsed_ms(started), error="timed out", timed_out=True)
        except (aiohttp.ClientError, OSError) as exc:
            return AttemptResult(None, _elapsed_ms(started), error=describe(exc))


async def _read_prefix(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body: ``read(n)`` returns whatever has arrived so far."""
    body = bytearray()
    while len(body) < limit:
        chunk = await stream.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def describe(exc: BaseException) -> str:
    """What went wrong, in words a subscriber's owner can act on (shown in the delivery log),
    rather than the HTTP client's own exception text."""
    cause = exc
    while isinstance(cause, aiohttp.ClientConnectorError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        text = "the subscriber's TLS certificate was not accepted"
    elif isinstance(exc, aiohttp.ClientSSLError):
        text = "the TLS handshake with the subscriber failed"
    elif isinstance(exc, AddressRefused) or isinstance(cause, AddressRefused):
        text = f"not sent: {cause}"
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        text = f"the subscriber's host name {exc.host!r} did not resolve"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno) if errno else type(exc.os_error).__name__
        text = f"could not connect to {exc.host}:{exc.port} ({reason.lower()})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        text = "the subscriber closed the connection without answering"
    elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        text = f"the subscriber's answer could not be read ({type(exc).__name__})"
    else:
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:500]
