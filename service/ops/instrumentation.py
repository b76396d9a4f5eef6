"""Measuring what crosses reelhook's edges: provider submissions and subscriber deliveries.

Both wrap the component that does the I/O (the provider HTTP transport, the delivery sender), so
the code deciding what to send stays free of metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import httpx

from service.core import ids
from service.delivery.sender import AttemptResult, Sender
from service.net.failures import classify
from service.net.posts import PostPool
from service.ops.metrics import Metrics


class MeteredTransport(httpx.AsyncBaseTransport):
    """Times each job submission (a POST under a provider's base URL) and counts failures.

    ``providers`` maps each provider's base URL to its name; other requests (e.g. downloading an
    output) pass through unmeasured.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, metrics: Metrics, providers: Mapping[str, str]
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        # Longest prefix first, so a base URL nested in another is matched by its own name.
        self._providers = sorted(providers.items(), key=lambda item: -len(item[0]))

    def _provider_of(self, request: httpx.Request) -> str | None:
        if request.method != "POST":
            return None
        url = str(request.url)
        for base, name in self._providers:
            if url.startswith(base + "/"):
                return name
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        provider = self._provider_of(request)
        if provider is None:
            return await self._inner.handle_async_request(request)
        started = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            reason = "timeout" if classify(exc).timed_out else "connection"
            self._metrics.provider_errors.labels(provider=provider, reason=reason).inc()
            raise
        self._metrics.provider_latency.labels(provider=provider).observe(
            time.perf_counter() - started
        )
        if response.status_code >= 400:
            reason = _status_reason(response.status_code)
            self._metrics.provider_errors.labels(provider=provider, reason=reason).inc()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _status_reason(status: int) -> str:
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


class MeteredSender(Sender):
    """A :class:`Sender` that counts each attempt's outcome and, for a 2xx, observes the lag
    from the event's creation (encoded in its id) to its delivery."""

    def __init__(self, session: Any, metrics: Metrics, posts: PostPool | None = None) -> None:
        super().__init__(session, posts)
        self._metrics = metrics
        # Each labelled counter looked up once, not per delivery (docs/performance.md §4); made
        # on first use, so /metrics shows only the outcomes that happened, as before.
        self._attempts: dict[AttemptKind, Any] = {}

    async def send(self, **options: Any) -> AttemptResult:
        result = await super().send(**options)
        kind = attempt_outcome(result)
        counter = self._attempts.get(kind)
        if counter is None:
            counter = self._attempts[kind] = self._metrics.delivery_attempts.labels(
                outcome=kind.value
            )
        counter.inc()
        if result.succeeded:
            try:
                lag = time.time() - ids.timestamp_of(str(options.get("event_id", "")))
            except ValueError:
                pass
            else:
                self._metrics.delivery_lag.observe(max(0.0, lag))
        return result


class AttemptKind(StrEnum):
    """A small, fixed vocabulary for what one delivery attempt came to (a metrics label)."""

    SUCCEEDED = "succeeded"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    GONE = "gone"
    THROTTLED = "throttled"
    REDIRECTED = "redirected"
    REJECTED = "rejected"
    SERVER_ERROR = "server_error"


def attempt_outcome(result: AttemptResult) -> AttemptKind:
    """What one delivery attempt came to."""
    if result.succeeded:
        return AttemptKind.SUCCEEDED
    status = result.status_code
    if status is None:
        return AttemptKind.TIMEOUT if result.timed_out else AttemptKind.UNREACHABLE
    if status == 410:
        return AttemptKind.GONE
    if status == 429:
        return AttemptKind.THROTTLED
    if 300 <= status < 400:
        return AttemptKind.REDIRECTED
    return AttemptKind.REJECTED if status < 500 else AttemptKind.SERVER_ERROR
