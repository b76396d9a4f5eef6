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
from service.core.errors import Conflict, NotFound, QuotaExceeded, ValidationFailed
from service.core.ids import new_id
from service.core.jsonutil import dumps
from service.core.models import EVENT_TYPES, JOB_EVENT_TYPES, Subscription, SubscriptionStatus
from service.core.paging import Page, page_of
from service.delivery import signing
from service.delivery.filters import FieldTree, FilterError
from service.delivery.filters import parse as parse_filter
from service.delivery.publisher import Publisher, ping_data
from service.delivery.samples import event_fields, sample_event
from service.delivery.transform import (
    CONTENT_TYPES,
    DEFAULT_CONTENT_TYPE,
    Limits,
    Renderer,
    TemplateError,
)
from service.jobs.catalog import MODELS
from service.net.guard import URL_PATTERN, IPNetwork, check_url
from service.storage import deliveries, health, quotas, subscriptions
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


ORDERINGS = ("none", "fifo")
"""``fifo``: one delivery in flight at a time, in event order (docs/ordered-delivery.md)."""


class PayloadFilter:
    """A payload filter (:mod:`service.delivery.filters`) whose paths exist in some event; null
    clears it. A bad one is refused naming its bad part (``filter.all[1].path``)."""

    def __init__(self) -> None:
        self._fields: FieldTree | None = None

    def parse(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if self._fields is None:
            self._fields = event_fields()
        try:
            return parse_filter(value, self._fields).spec
        except FilterError as exc:
            raise ValidationFailed.field(exc.where, exc.problem) from None

    def schema(self) -> Schema:
        # The language is recursive, so it is a component of the document (service/api/schemas).
        return {"anyOf": [{"$ref": "#/components/schemas/PayloadFilter"}, {"type": "null"}]}


class BodyTemplate:
    """A body template's source, or null for none; it is compiled and tried on sample events
    once the content type and the event types it will see are known."""

    def parse(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise Problem("must be a non-empty string or null")
        if len(value) > Limits().max_source:
            raise Problem(f"longer than {Limits().max_source} characters")
        return value

    def schema(self) -> Schema:
        text = {"type": "string", "minLength": 1, "maxLength": Limits().max_source}
        # Not only whitespace (what parse() refuses).
        return {"anyOf": [{**text, "pattern": r"\S"}, {"type": "null"}]}


_FIELDS = (
    Field(
        "url",
        Text("is required and must be a string", pattern=URL_PATTERN),
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
    Field(
        "filter",
        PayloadFilter(),
        "Deliver only events whose body passes this filter (after event_types and models); "
        "null: no payload filter. A path no event can have is refused.",
    ),
    Field(
        "template",
        BodyTemplate(),
        "A Jinja2 template (sandboxed; 0.1 s, 64 kB of output) rendering the body to send "
        "instead of the event, e.g. a Slack or Discord message; null: send the event. It sees "
        "type, timestamp, data, event and event_id, and is tried on a sample of each event type "
        "the subscription receives.",
    ),
    Field(
        "content_type",
        Choice(CONTENT_TYPES, f"must be one of {', '.join(CONTENT_TYPES)}"),
        "What the template produces (application/json must render JSON); without a template "
        "only application/json.",
    ),
    Field(
        "signature_scheme",
        Choice(signing.SCHEMES, f"must be one of {', '.join(signing.SCHEMES)}"),
        "v1 (default): HMAC-SHA256 with a shared whsec_ secret. v1a: Ed25519; verify with the "
        "whpk_ public_key. Changing it is a rotation: both signatures for the grace period.",
    ),
    Field(
        "ordering",
        Choice(ORDERINGS, f"must be one of {', '.join(ORDERINGS)}"),
        "fifo: at most one delivery in flight, each after the previous one succeeded or "
        "exhausted its retries, so a failing endpoint holds back the rest.",
    ),
)
# Another content type than JSON needs a template to produce it (Subscriptions._check_body).
_TEMPLATE_FOR_OTHER_TYPES: Schema = {
    "if": {
        "required": ["content_type"],
        "properties": {"content_type": {"not": {"const": DEFAULT_CONTENT_TYPE}}},
    },
    "then": {"required": ["template"], "properties": {"template": {"type": "string"}}},
}

PREVIEW_BODY = Body(
    (
        Field(
            "event_type",
            Choice(EVENT_TYPES, f"must be one of {', '.join(EVENT_TYPES)}"),
            "Which sample event to use (default job.succeeded).",
        ),
        *(field for field in _FIELDS if field.name in ("filter", "template", "content_type")),
    ),
    partial=True,
    rules=(_TEMPLATE_FOR_OTHER_TYPES,),
)
NEW_SUBSCRIPTION = Body(_FIELDS, rules=(_TEMPLATE_FOR_OTHER_TYPES,))
TEST_BODY = Body(
    (
        Field(
            "type",
            Choice(EVENT_TYPES, f"must be one of {', '.join(EVENT_TYPES)}"),
            "Send a realistic sample of this event type instead of a `ping` (the shape of "
            "`GET /v1/events/sample`; its job is not a real one).",
        ),
    )
)
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
        require_https: bool = False,
        renderer: Renderer | None = None,
        max_per_key: int = 1000,
    ) -> None:
        self._db = db
        self._require_https = require_https
        self._clock = clock
        self._publisher = publisher
        self._allow_private = allow_private
        self._rotation_grace = rotation_grace
        self._renderer = renderer or Renderer()
        self._max_per_key = max_per_key

    def _validated(self, body: Body, raw: Any) -> dict[str, Any]:
        return body.validate(
            raw,
            {
                "url": lambda url: check_url(
                    url, self._allow_private, require_https=self._require_https
                )
            },
        )

    async def owned(self, caller: Caller, sub_id: str) -> Subscription:
        """The subscription, if ``caller`` may see it; :class:`NotFound` otherwise."""
        return await _owned(self._db.reader, caller, sub_id)

    async def health(self, sub: Subscription, *, since: float) -> Health:
        """How the subscription's deliveries have fared since ``since``."""
        return await health.of_subscription(self._db.reader, sub.id, since=since)

    async def queue(self, sub: Subscription) -> deliveries.Queue:
        """A FIFO subscription's line: the delivery at its head and how many wait behind it."""
        return await deliveries.queue_of(self._db.reader, sub.id)

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
            secret=signing.new_secret(fields.get("signature_scheme", "v1")),
            event_types=fields.get("event_types", ()),
            models=fields.get("models", ()),
            headers=fields.get("headers", {}),
            description=fields.get("description", ""),
            status=SubscriptionStatus.ACTIVE,
            created_at=now,
            updated_at=now,
            filter=fields.get("filter"),
            template=fields.get("template"),
            content_type=fields.get("content_type", DEFAULT_CONTENT_TYPE),
            ordering=fields.get("ordering", "none"),
        )
        self._check_body(sub)
        async with self._db.transaction() as conn:
            # Counted in the write transaction under the key's lock, so concurrent creates
            # cannot overshoot, on one node or several.
            await quotas.lock_key(conn, quotas.SUBSCRIPTIONS, caller.key_id)
            if await subscriptions.count_standing(conn, caller.key_id) >= self._max_per_key:
                raise QuotaExceeded.of(
                    "REELHOOK_MAX_SUBSCRIPTIONS_PER_KEY", self._max_per_key, "subscriptions"
                )
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
            scheme = changes.pop("signature_scheme", sub.signature_scheme)
            changed = dataclasses.replace(sub, **changes, updated_at=now)
            self._check_body(changed)
            await subscriptions.save(conn, changed)
            if scheme != sub.signature_scheme:
                # A switch of scheme is a rotation: both signatures for the grace period.
                await subscriptions.rotate_secret(
                    conn,
                    sub.id,
                    signing.new_secret(scheme),
                    previous_until=now + self._rotation_grace,
                    now=now,
                )
            if sub.ordering == "fifo" and changed.ordering != "fifo":
                await deliveries.release_queue(conn, sub.id, now)
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

    async def ping(self, caller: Caller, sub_id: str, *, event_type: str = "ping") -> str:
        """Queue a ``ping`` event (or a realistic sample of ``event_type``, whatever the
        subscription's filters: what ``reelhook trigger`` sends) to this one subscription; return
        the event's id. :class:`Conflict` while it is disabled."""
        async with self._db.transaction() as conn:
            sub = await _owned(conn, caller, sub_id)
            if sub.status != SubscriptionStatus.ACTIVE:
                raise Conflict("the subscription is disabled; enable it to send a test event")
            now = self._clock()
            data = (
                ping_data(sub.id)
                if event_type == "ping"
                else sample_event(event_type, now=now, file_url=self._publisher.file_url)["data"]
            )
            event_id = await self._publisher.publish(
                conn, event_type, now, data=data, to_subscription=sub.id
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
                signing.new_secret(sub.signature_scheme),
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

    def _check_body(self, sub: Subscription) -> None:
        """The template compiles and renders a sample of every event type ``sub`` receives
        within the limits, in its content type; with no template only JSON is sent. Pings (the
        test button) go through the template too but need not render: a template made for
        videos may have nothing to say about a ping, and its failure shows in the delivery log.
        """
        if sub.template is None:
            if sub.content_type != DEFAULT_CONTENT_TYPE:
                raise ValidationFailed.field(
                    "content_type", f"only {DEFAULT_CONTENT_TYPE} without a template"
                )
            return
        try:
            self._renderer.compile(sub.template)
        except TemplateError as exc:
            raise ValidationFailed.field("template", str(exc)) from None
        now = self._clock()
        received = sub.event_types or (*JOB_EVENT_TYPES, "subscription.disabled")
        for event_type in received:
            event = sample_event(event_type, now=now, file_url=self._publisher.file_url)
            event_id = event.pop("id")
            try:
                self._renderer.render(sub.template, sub.content_type, event_id, event)
            except TemplateError as exc:
                raise ValidationFailed.field(
                    "template", f"rendering a sample {event_type} event: {exc}"
                ) from None

    def preview(self, body: Any) -> Preview:
        """What a subscription with ``body``'s template and filter (:data:`PREVIEW_BODY`) would
        do with a sample event of ``event_type``; nothing is stored. The errors are those a
        subscription with these fields would get."""
        fields = PREVIEW_BODY.validate(body)
        event_type = fields.get("event_type", "job.succeeded")
        template = fields.get("template")
        content_type = fields.get("content_type", DEFAULT_CONTENT_TYPE)
        now = self._clock()
        event = sample_event(event_type, now=now, file_url=self._publisher.file_url)
        delivered = {key: value for key, value in event.items() if key != "id"}
        spec = fields.get("filter")
        matches = None
        if spec is not None:
            matches = parse_filter(spec, event_fields()).matches(delivered)
        if template is None:
            if content_type != DEFAULT_CONTENT_TYPE:
                raise ValidationFailed.field(
                    "content_type", f"only {DEFAULT_CONTENT_TYPE} without a template"
                )
            rendered = dumps(delivered)
        else:
            try:
                rendered = self._renderer.render(
                    template, content_type, event["id"], delivered
                ).decode()
            except TemplateError as exc:
                raise ValidationFailed.field("template", str(exc)) from None
        return Preview(event, matches, content_type, rendered)


@dataclass(frozen=True, slots=True)
class Preview:
    """A sample event, whether a filter passes it (None: no filter), and the body that would be
    sent for it."""

    event: dict[str, Any]
    filter_matches: bool | None
    content_type: str
    body: str
