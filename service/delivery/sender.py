"""Sends one signed delivery over aiohttp and reports what happened, never raising.

aiohttp is the fan-out client by choice (see :mod:`service.net.client` for the split and the
guard); a failed exchange is classified by :func:`service.net.failures.classify`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from service.delivery import signing
from service.net.client import guarded_session
from service.net.failures import classify, describe
from service.net.guard import IPNetwork
from service.net.posts import PostPool

RESPONSE_KEEP_BYTES = 20_000


@dataclass(slots=True)  # not frozen: made per delivery (see storage.deliveries.Claimed)
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
    """Signs and posts deliveries: to plain-HTTP subscribers through ``posts`` (the fast path,
    :mod:`service.net.posts`) when given, otherwise through one pooled aiohttp session (see
    :meth:`session`), with the same answers and the same errors either way."""

    def __init__(self, session: aiohttp.ClientSession, posts: PostPool | None = None) -> None:
        self._session = session
        self._posts = posts
        self._timeout = session.timeout.total or 30.0
        self._signer = signing.Signer()

    @classmethod
    def session(
        cls, *, allow: Sequence[IPNetwork], timeout: float, concurrency: int
    ) -> aiohttp.ClientSession:
        return guarded_session(allow, timeout=timeout, concurrency=concurrency)

    async def send(
        self,
        *,
        url: str,
        event_id: str,
        payload: bytes,
        secrets: Sequence[str],
        headers: dict[str, str],
        timestamp: int,
        content_type: str = "application/json",
    ) -> AttemptResult:
        """POST ``payload`` (exactly these bytes, which are the ones signed) to ``url`` signed
        with ``secrets``; redirects are not followed."""
        signature = self._signer.signature(secrets, event_id, timestamp, payload)
        started = time.perf_counter()
        if self._posts is not None and self._posts.handles(url):
            return await self._fast(
                url, payload, headers, content_type, event_id, timestamp, signature, started
            )
        request_headers = {
            **headers,
            "Content-Type": content_type,
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature.decode("ascii"),
        }
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
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            if classify(exc).timed_out:
                return AttemptResult(None, _elapsed_ms(started), error="timed out", timed_out=True)
            return AttemptResult(None, _elapsed_ms(started), error=describe(exc, 500))

    async def _fast(
        self,
        url: str,
        payload: bytes,
        headers: dict[str, str],
        content_type: str,
        event_id: str,
        timestamp: int,
        signature: bytes,
        started: float,
    ) -> AttemptResult:
        """The fast path: the request built in one join, the subscription's fixed headers
        encoded once (:meth:`PostPool.head`), the same headers in the same order as over
        aiohttp. (Reelhook's own ids, timestamps and signatures hold no line breaks.)"""
        assert self._posts is not None
        try:
            request = b"".join(
                (
                    self._posts.head(url, {**headers, "Content-Type": content_type}),
                    b"webhook-id: ",
                    event_id.encode("ascii"),
                    b"\r\nwebhook-timestamp: %d\r\nwebhook-signature: " % timestamp,
                    signature,
                    b"\r\nContent-Length: %d\r\n\r\n" % len(payload),
                    payload,
                )
            )
            answer = await self._posts.exchange(
                url, request, timeout=self._timeout, keep=RESPONSE_KEEP_BYTES
            )
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            if classify(exc).timed_out:
                return AttemptResult(None, _elapsed_ms(started), error="timed out", timed_out=True)
            return AttemptResult(None, _elapsed_ms(started), error=describe(exc, 500))
        status = answer.status
        return AttemptResult(
            status,
            _elapsed_ms(started),
            error=None if 200 <= status < 300 else f"HTTP {status}",
            response_body=answer.body,
            retry_after=answer.headers.get("retry-after"),
        )


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
