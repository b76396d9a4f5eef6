"""The delivery log: which events went (or are going) to which subscriber, each attempt with the
start of its answer, and resending one delivery now.

The documents built here (:func:`delivery_document`, :func:`attempt_document`) are what the API
answers with and what the console shows.
"""

from __future__ import annotations

import base64
import codecs
import json
from dataclasses import dataclass
from typing import Any

from service.access.callers import Caller
from service.core import params
from service.core.clock import Clock, isoformat
from service.core.errors import Conflict, NotFound
from service.core.models import EVENT_TYPES, DeliveryStatus, SubscriptionStatus
from service.core.paging import Page, page_of
from service.core.params import Query
from service.storage import deliveries, subscriptions
from service.storage.database import Database
from service.storage.deliveries import Attempt, Delivery


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries a listing shows (None: any)."""

    subscription_id: str | None = None
    status: DeliveryStatus | None = None
    event_id: str | None = None
    job_id: str | None = None
    event_type: str | None = None
    since: float | None = None  # created at or after (epoch seconds)
    until: float | None = None  # created before


# Each filter, and the shorter name the design spells it with.
FILTERS = {"subscription_id": "subscription", "event_id": "event", "job_id": "job"}


def delivery_filter(query: Query) -> DeliveryFilter:
    """The filters of a delivery listing (each may be spelt long or short; both must agree)."""
    status = params.choice(query, "status", DeliveryStatus)
    return DeliveryFilter(
        subscription_id=params.one_of_two(query, "subscription_id", FILTERS["subscription_id"]),
        status=DeliveryStatus(status) if status is not None else None,
        event_id=params.one_of_two(query, "event_id", FILTERS["event_id"]),
        job_id=params.one_of_two(query, "job_id", FILTERS["job_id"]),
        event_type=params.choice(query, "event_type", EVENT_TYPES),
        since=params.time(query, "since"),
        until=params.time(query, "until"),
    )


def delivery_document(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "delivery",
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "job_id": delivery.job_id,
        "subscription_id": delivery.subscription_id,
        "status": delivery.status.value,
        "attempt_count": delivery.attempts,
        "next_attempt_at": isoformat(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": isoformat(delivery.created_at),
        "updated_at": isoformat(delivery.updated_at),
    }


def attempt_document(attempt: Attempt) -> dict[str, Any]:
    body, encoding = response_text(attempt.response_body)
    return {
        "attempted_at": isoformat(attempt.attempted_at),
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "response_body": body,
        "response_body_encoding": encoding,
    }


def response_text(body: bytes | None) -> tuple[str | None, str | None]:
    """The stored response prefix as text when it is UTF-8 (a character cut by the 20 kB limit
    is dropped), otherwise as base64; and which of the two it is."""
    if body is None:
        return None, None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(body, final=False), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode(), "base64"


@dataclass(frozen=True, slots=True)
class DeliveryDetails:
    delivery: Delivery
    payload: Any
    """The event body the subscriber receives; None once pruned."""
    attempts: list[Attempt]
    """Every attempt, oldest first."""


class Deliveries:
    """Reading the delivery log and resending (the store's announcement wakes the dispatcher)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def page(
        self, caller: Caller, chosen: DeliveryFilter, *, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        """The deliveries ``caller`` may see, newest first."""
        rows = await self._matching(caller, chosen, before_id=cursor, limit=limit + 1)
        return page_of(rows, limit, lambda delivery: delivery.id)

    async def _matching(
        self, caller: Caller, chosen: DeliveryFilter, *, before_id: str | None, limit: int
    ) -> list[Delivery]:
        """Up to ``limit`` deliveries ``caller`` may see that ``chosen`` selects, newest first
        (before ``before_id`` when given)."""
        return await deliveries.list_page(
            self._db.reader,
            owner_key_id=caller.owner_filter,
            subscription_id=chosen.subscription_id,
            status=chosen.status,
            event_id=chosen.event_id,
            job_id=chosen.job_id,
            event_type=chosen.event_type,
            created_since=chosen.since,
            created_until=chosen.until,
            before_id=before_id,
            limit=limit,
        )

    async def resend_matching(
        self, caller: Caller, chosen: DeliveryFilter, *, limit: int = 500
    ) -> tuple[int, int]:
        """Bulk retry: :meth:`resend` every delivery ``chosen`` selects (at most ``limit``,
        newest first) that can be resent; return (resent, skipped). Deliveries whose attempt is
        running, or whose subscription is disabled or deleted, are skipped, not errors."""
        rows = await self._matching(caller, chosen, before_id=None, limit=limit)
        resent = skipped = 0
        for delivery in rows:
            try:
                await self.resend(caller, delivery.id)
                resent += 1
            except (Conflict, NotFound):
                skipped += 1
        return resent, skipped

    async def find(self, caller: Caller, delivery_id: str) -> Delivery:
        """The delivery, if ``caller`` may see it; :class:`NotFound` otherwise."""
        found = await deliveries.get(self._db.reader, delivery_id, owner_key_id=caller.owner_filter)
        if found is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        return found

    async def details(self, caller: Caller, delivery_id: str) -> DeliveryDetails:
        """The delivery with its payload and its attempts."""
        delivery = await self.find(caller, delivery_id)
        reader = self._db.reader
        payload = await deliveries.payload_of(reader, delivery.event_id)
        attempts = await deliveries.attempts_of(reader, delivery.id)
        return DeliveryDetails(
            delivery, json.loads(payload) if payload is not None else None, attempts
        )

    async def resend(self, caller: Caller, delivery_id: str) -> Delivery:
        """Queue one more attempt of the delivery now, whatever its state; return it.

        A delivery still waiting for a retry keeps its schedule, brought forward to now; a
        finished one (succeeded or failed, retries exhausted or not) gets one more attempt, not
        rescheduled if it fails. :class:`Conflict` while an attempt is under way, or when its
        subscription is disabled or deleted.
        """
        # One transaction: the subscription cannot be disabled or deleted between the check and
        # the write.
        async with self._db.transaction() as conn:
            delivery = await deliveries.get(conn, delivery_id, owner_key_id=caller.owner_filter)
            if delivery is None:
                raise NotFound(f"no delivery {delivery_id!r}")
            sub = await subscriptions.get(conn, delivery.subscription_id)
            if sub is None or delivery.status == DeliveryStatus.CANCELED:
                raise Conflict("the delivery's subscription has been deleted")
            if sub.status != SubscriptionStatus.ACTIVE:
                raise Conflict("the subscription is disabled; enable it to resend")
            resent = await deliveries.resend(conn, delivery.id, self._clock())
            updated = await deliveries.get(conn, delivery.id, owner_key_id=None)
        if not resent or updated is None:
            raise Conflict("an attempt of this delivery is in flight; try again when it has ended")
        return updated
