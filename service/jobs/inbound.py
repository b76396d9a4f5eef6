"""Bounded inbound memory for callbacks: a byte budget and a concurrency limit per provider route
(docs/architecture.md, "Bounded inbound memory").

A callback's body is held from the moment reelhook starts reading it until the ingest writer has
committed it. Before reading, a callback reserves its declared length (or the largest body
allowed when it declares none) from one budget shared by every callback in flight and queued;
what it did not need is handed back once read, the rest when its commit is done. A callback that
finds the budget spent, or its provider's route at its concurrency limit, is answered 503 +
``Retry-After`` at once, before a byte of its body is read, so a flood of large uploads costs at
most the budget, never memory without bound. Providers send a refused callback again.
"""

from __future__ import annotations

from collections import Counter

from service.core.errors import ServiceUnavailable


class Reservation:
    """Bytes and a route's slot held from an :class:`InboundBudget` while the ``with`` block
    runs (:meth:`InboundBudget.hold`); :meth:`shrink` hands back what is unused.

    A class rather than a ``@contextmanager`` generator: entered once per callback, the
    generator's machinery cost ~1.5 µs of the event loop's time (docs/performance.md §4)."""

    __slots__ = ("_budget", "_route", "size")

    def __init__(self, budget: InboundBudget, route: str, size: int) -> None:
        self._budget = budget
        self._route = route
        self.size = size

    def __enter__(self) -> Reservation:
        self._budget._take(self._route, self.size)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._budget._give_back(self._route, self.size)

    def shrink(self, size: int) -> None:
        if size < self.size:
            self._budget.used -= self.size - size
            self.size = size


class InboundBudget:
    """Bytes of callback bodies in flight or queued, at most ``max_bytes`` in all, and at most
    ``per_route`` callbacks at once per provider route. One per application, on one event loop."""

    def __init__(self, *, max_bytes: int, per_route: int) -> None:
        self.max_bytes = max_bytes
        self.per_route = per_route
        self.used = 0
        self._routes: Counter[str] = Counter()

    def hold(self, route: str, size: int) -> Reservation:
        """Reserve ``size`` bytes and one of ``route``'s slots for a ``with`` block, or raise
        :class:`ServiceUnavailable` (503 + Retry-After) at once as it is entered."""
        return Reservation(self, route, size)

    def _take(self, route: str, size: int) -> None:
        if self._routes[route] >= self.per_route:
            raise ServiceUnavailable(
                f"reelhook is receiving {self.per_route} {route} callbacks at once, the most "
                "REELHOOK_CALLBACK_CONCURRENCY allows; send this one again shortly",
                headers={"Retry-After": "1"},
            )
        if self.used + size > self.max_bytes:
            raise ServiceUnavailable(
                "reelhook holds as many callback bytes as REELHOOK_INBOUND_BUFFER_BYTES allows; "
                "send this one again shortly",
                headers={"Retry-After": "1"},
            )
        self._routes[route] += 1
        self.used += size

    def _give_back(self, route: str, size: int) -> None:
        self.used -= size
        self._routes[route] -= 1
        if not self._routes[route]:
            del self._routes[route]
