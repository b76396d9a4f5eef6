"""Sends one signed delivery over aiohttp and reports what happened, never raising."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from service import signing
from service.delivery.guard import GuardedResolver, IPNetwork, address_allowed, ip_literal

RESPONSE_KEEP_BYTES = 20_000
USER_AGENT = "reelhook/0.1 (+https://github.com/reelhook)"


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

    def __init__(self, session: aiohttp.ClientSession, allow: Sequence[IPNetwork]) -> None:
        self._session = session
        self._allow = tuple(allow)

    @classmethod
    def session(
        cls, *, allow: Sequence[IPNetwork], timeout: float, concurrency: int
    ) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=concurrency, resolver=GuardedResolver(allow), ttl_dns_cache=30
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
        host = urlsplit(url).hostname or ""
        literal = ip_literal(host)
        if literal is not None and not address_allowed(literal, self._allow):
            return AttemptResult(None, 0.0, error=f"refused: {literal} is a private address")
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
                body = await response.content.read(RESPONSE_KEEP_BYTES)
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
            return AttemptResult(None, _elapsed_ms(started), error=_describe(exc))


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
