"""Secrets shown once after a POST-redirect-GET.

A console POST that makes a secret (a new subscription, a rotated signing secret, a new API key)
answers with a redirect, so reloading the page it lands on never repeats the action. The secret
cannot travel in that redirect's URL (it would sit in history and logs), so it waits here under
a random handle that only the session which made it can redeem, once, within a few minutes.

In memory on purpose: a secret that was never picked up is better lost on a restart than stored.
One reelhook process serves a data directory (see service.storage.datadir), so every request of
a session reaches this store.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Waiting:
    owner: str
    subject: str
    secret: str
    expires_at: float


class OneTimeSecrets:
    """``put`` a secret for an owner (the signed-in key) and a subject (what it belongs to), get a
    handle; ``take`` it back once. At most ``capacity`` wait at a time (oldest dropped first)."""

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        capacity: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()

    def put(self, owner: str, subject: str, secret: str) -> str:
        now = self._clock()
        self._drop_expired(now)
        while len(self._waiting) >= self._capacity:
            self._waiting.popitem(last=False)
        handle = secrets.token_urlsafe(18)
        self._waiting[handle] = _Waiting(owner, subject, secret, now + self._ttl)
        return handle

    def take(self, handle: str, owner: str, subject: str) -> str | None:
        """The secret, the first time it is asked for by its owner about its subject; None
        afterwards, when expired, or for anyone else (who leaves it in place)."""
        self._drop_expired(self._clock())
        waiting = self._waiting.get(handle)
        if waiting is None or waiting.owner != owner or waiting.subject != subject:
            return None
        del self._waiting[handle]
        return waiting.secret

    def _drop_expired(self, now: float) -> None:
        for handle in [h for h, w in self._waiting.items() if w.expires_at <= now]:
            del self._waiting[handle]
