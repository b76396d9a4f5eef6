"""Subscriptions: subscriber URLs with event-type and model filters, and what a client does
with them (create, change, disable, test, rotate the secret, recover failed deliveries, delete).

Every operation takes the :class:`Caller`; one that names a subscription the caller may not see
raises :class:`NotFound`, as if it did not exist. The body of a create or a change is declared
once (:data:`NEW_SUBSCRIPTION`, :data:`SUBSCRIPTION_CHANGES`), which gives both its checks and
its schema.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.access.callers import Caller
from service.core import params
from service.core.body import Body, Choice, Choices, Field, Problem, Schema, Text
from service.core.clock import Clock
from service.core.errors import Conflict, NotFound, ValidationFailed
from service.core.ids import new_id
from service.core.models import EVENT_TYPES, Subscription, SubscriptionStatus
from service.core.paging import Page, page_of
from service.delivery import signing
from service.delivery.publisher import Publisher, ping_data
from service.jobs.catalog import MODELS
from service.net.guard import IPNetwork, check_url
from service.storage import deliveries, health, subscriptions
from service.storage.database import Connection, Database
from service.storage.health import Health

# RFC 9110 section 5.1 token characters, and visible ASCII plus space/tab in a value.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
_MAX_HEADER_VALUE = 4096
_RESERVED_HEADERS = {
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "connection",
}


class StaticHeaders:
    """Headers a subscriber wants on every delivery: valid names and values, none of those
    reelhook sets itself."""

    def parse(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise Problem("must be an object of string values")
        for name, header_value in value.items():
            if name.lower() in _RESERVED_HEADERS:
                raise Problem(f"{name!r} is set by reelhook itself")
            if not _TOKEN.fullmatch(name):
                raise Problem(f"{name!r} is not a valid header name")
            if not _FIELD_VALUE.fullmatch(header_value) or len(header_value) > _MAX_HEADER_VALUE:
                raise Problem(f"the value of {name!r} is not valid")
        return dict(value)

    def schema(self) -> Schema:
        return {
            "type": "object",
            "propertyNames": {"pattern": f"^{_TOKEN.pattern}$"},
            "additionalProperties": {
                "type": "string",
                "maxLength": _MAX_HEADER_VALUE,
                "pattern": f"^{_FIELD_VALUE.pattern}$",
            },
        }


_FIELDS = (
    Field(
        "url",
        Text("is required and must be a string"),
        "Where events are POSTed (http or https; private addresses are refused unless "
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS covers them).",
        required=True,
    ),
    # null clears a filter; any other value must have the right type.
    Field(
        "event_types",
        Choices(EVENT_TYPES, "must be a list of strings"),
        "Event types to receive; empty or null: every job event.",
        nullable=True,
        empty=[],
    ),
    Field(
        "models",
        Choices(tuple(MODELS), "must be a list of strings"),
        "Only events about jobs of these models; empty or null: all.",
        nullable=True,
        empty=[],
    ),
    Field(
        "headers",
        StaticHeaders(),
        "Static headers sent with every delivery (e.g. n8n Header Auth). The Standard Webhooks "
        "headers, Content-Type, Host and the like are reelhook's own.",
        nullable=True,
        empty={},
    ),
    Field("description", Text("must be a string of at most 500 characters", max_length=500)),
)
NEW_SUBSCRIPTION = Body(_FIELDS)
SUBSCRIPTION_CHANGES = Body(
    (
        *_FIELDS,
        Field(
            "status",
            Choice(tuple(SubscriptionStatus), "must be active or disabled"),
            "disabled holds its deliveries until it is active again.",
        ),
    ),
    partial=True,
)


@dataclass(frozen=True, slots=True)
class Recovered:
    count: int
    since: float
    until: float | None


async def _owned(conn: Connection, caller: Caller, sub_id: str) -> Subscription:
    # Operations that change a subscription read it on their own transaction's connection, so
    # what they checked is what they change.
    sub = await subscriptions.get(conn, sub_id)
    if sub is None or sub.job_id is not None or not caller.can_see(sub.owner_key_id):
        raise NotFound(f"no subscription {sub_id!r}")
    return sub


class Subscriptions:
    """The operations on subscriptions. A commit that makes a delivery due (a ping, a re-enable, a
    recovery) wakes the dispatcher through the store's work announcements."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        publisher: Publisher,
        *,
        allow_private: Sequence[IPNetwork],
        rotation_grace: float,
    ) -> None:
        self._db = db
        self._clock = clock
        self._publisher = publisher
        self._allow_private = allow_private
        self._rotation_grace = rotation_grace

    def _validated(self, body: Body, raw: Any) -> dict[str, Any]:
        return body.validate(raw, {"url": lambda url: check_url(url, self._allow_private)})

    async def owned(self, caller: Caller, sub_id: str) -> Subscription:
        """The subscription, if ``caller`` may see it; :class:`NotFound` otherwise."""
        return await _owned(self._db.reader, caller, sub_id)

    async def health(self, sub: Subscription, *, since: float) -> Health:
        """How the subscription's deliveries have fared since ``since``."""
        return await health.of_subscription(self._db.reader, sub.id, since=since)

    async def page(self, caller: Caller, *, cursor: str | None, limit: int) -> Page[Subscription]:
        """The subscriptions ``caller`` may see, oldest first."""
        rows = await subscriptions.list_page(
            self._db.reader, owner_key_id=caller.owner_filter, after_id=cursor, limit=limit + 1
        )
        return page_of(rows, limit, lambda sub: sub.id)

    async def create(self, caller: Caller, body: Any) -> Subscription:
        """Validate ``body`` (:data:`NEW_SUBSCRIPTION`) and store a new subscription owned by
        ``caller``; its secret is in the answer, to be shown once."""
        fields = self._validated(NEW_SUBSCRIPTION, body)
        now = self._clock()
        sub = Subscription(
            id=new_id("sub"),
            owner_key_id=caller.key_id,
            url=fields["url"],
            secret=signing.new_secret(),
            event_types=fields.get("event_types", ()),
            models=fields.get("models", ()),
            headers=fields.get("headers", {}),
            description=fields.get("description", ""),
            status=SubscriptionStatus.ACTIVE,
            created_at=now,
            updated_at=now,
        )
        async with self._db.transaction() as conn:
            await subscriptions.insert(conn, sub)
        return sub

    async def update(self, caller: Caller, sub_id: str, body: Any) -> Subscription:
        """Apply ``body`` (:data:`SUBSCRIPTION_CHANGES`: any field; null clears a filter); return
        the subscription as stored."""
        async with self._db.transaction() as conn:
            sub = await _owned(conn, caller, sub_id)
            changes = self._validated(SUBSCRIPTION_CHANGES, body)
            now = self._clock()
            status = changes.pop("status", sub.status)
            await subscriptions.save(conn, dataclasses.replace(sub, **changes, updated_at=now))
            if status != sub.status:
                # Either way the failure window starts afresh: a re-enabled subscription gets
                # the whole window again before it can be disabled for failing.
                await subscriptions.set_status(
                    conn,
                    sub.id,
                    SubscriptionStatus(status),
                    reason="disabled through the API",
                    now=now,
                )
            updated = await subscriptions.get(conn, sub.id)
        assert updated is not None  # read back inside the transaction that saved it
        return updated

    async def delete(self, caller: Caller, sub_id: str) -> None:
        """Delete the subscription and cancel its open deliveries."""
        async with self._db.transaction() as conn:
            sub = await _owned(conn, caller, sub_id)
            await subscriptions.delete(conn, sub.id)

    async def ping(self, caller: Caller, sub_id: str) -> str:
        """Queue a ``ping`` event to this one subscription; return the event's id.
        :class:`Conflict` while it is disabled."""
        async with self._db.transaction() as conn:
            sub = await _owned(conn, caller, sub_id)
            if sub.status != SubscriptionStatus.ACTIVE:
                raise Conflict("the subscription is disabled; enable it to send a test event")
            event_id = await self._publisher.publish(
                conn, "ping", self._clock(), data=ping_data(sub.id), to_subscription=sub.id
            )
        return event_id

    async def rotate(self, caller: Caller, sub_id: str) -> Subscription:
        """Give the subscription a new secret (returned, to be shown once). For the rotation
        grace period every message carries a second signature made with the secret it
        replaced."""
        async with self._db.transaction() as conn:
            sub = await _owned(conn, caller, sub_id)
            now = self._clock()
            await subscriptions.rotate_secret(
                conn,
                sub.id,
                signing.new_secret(),
                previous_until=now + self._rotation_grace,
                now=now,
            )
            rotated = await subscriptions.get(conn, sub.id)
        assert rotated is not None  # read back inside the transaction that updated it
        return rotated

    async def recover(self, caller: Caller, sub_id: str, *, since: str, until: str) -> Recovered:
        """Queue one attempt now for every delivery of the subscription that failed for good
        and was created in [since, until), both as :func:`service.core.params.parse_time` reads
        them (``until`` may be empty). :class:`ValidationFailed` for a missing or unreadable
        time, a ``since`` in the future or an ``until`` not after it; :class:`Conflict` while
        the subscription is disabled."""
        async with self._db.transaction() as conn:
            sub = await _owned(conn, caller, sub_id)
            start = params.parse_time(since, "since", required=True)
            end = params.parse_time(until, "until")
            assert start is not None  # required
            now = self._clock()
            if start > now:
                raise ValidationFailed.field("since", "is in the future")
            if end is not None and end <= start:
                raise ValidationFailed.field("until", "must be later than since")
            if sub.status != SubscriptionStatus.ACTIVE:
                raise Conflict("the subscription is disabled; enable it to recover its deliveries")
            count = await deliveries.recover(conn, sub.id, since=start, until=end, now=now)
        return Recovered(count, start, end)
