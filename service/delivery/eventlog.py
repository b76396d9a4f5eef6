"""Reading the event log: a page of it, and following it live as Server-Sent Events.

Each streamed event is one SSE message: ``id`` is its position in the log (``seq``), ``event`` its
type and ``data`` the same JSON object a page lists. A client that reconnects with
``Last-Event-ID`` gets every later event exactly once. The stream reads the log, then sleeps until
a commit wakes it (see :mod:`service.delivery.eventfeed`) or a keep-alive comment is due.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from service.access.callers import Caller
from service.core import params, sse
from service.core.errors import QuotaExceeded, ValidationFailed
from service.core.models import EVENT_TYPES
from service.core.paging import Page, page_of
from service.core.params import Query, is_decimal
from service.delivery.eventfeed import EventFeed, render
from service.storage import events
from service.storage.database import Database

STREAM_PAGE = 200
RECONNECT_MS = 2000


def event_types(query: Query) -> list[str]:
    """The ``type`` filter: comma-separated event types (empty: every type)."""
    return params.choices_list(query, "type", EVENT_TYPES, "event type")


class EventLog:
    def __init__(
        self, db: Database, feed: EventFeed, *, keepalive: float, max_streams_per_key: int = 100
    ) -> None:
        self._db = db
        self._feed = feed
        self._keepalive = keepalive
        self._max_streams = max_streams_per_key
        # Open streams per API key (the stream quota).
        self._open: Counter[str] = Counter()

    async def head(self) -> int:
        """The position of the last event in the log (0 when empty)."""
        return await events.last_seq(self._db.reader)

    async def _seq_of(self, name: str, event_id: str, caller: Caller) -> int:
        # Another key's event is answered as an unknown one: its existence is not confirmed.
        seq = await events.seq_of(self._db.reader, event_id, caller.owner_filter)
        if seq is None:
            raise ValidationFailed.field(name, f"no event {event_id!r}")
        return seq

    async def page(
        self,
        caller: Caller,
        types: Sequence[str],
        *,
        cursor: str | None,
        after: str | None,
        limit: int,
    ) -> Page[dict[str, Any]]:
        """The events ``caller`` may see (a non-admin key: those of its own jobs), oldest first,
        from ``cursor`` (a position this returned), else after the event ``after``."""
        after_seq = 0
        if cursor is not None:
            if not is_decimal(cursor):
                raise ValidationFailed.field("cursor", "is not a cursor this API returned")
            after_seq = int(cursor)
        elif after is not None:
            after_seq = await self._seq_of("after", after, caller)
        rows = await events.list_page(
            self._db.reader,
            after_seq=after_seq,
            types=list(types),
            owner_key_id=caller.owner_filter,
            limit=limit + 1,
        )
        found = page_of(rows, limit, lambda row: str(row["seq"]))
        data = [{"id": row["id"], **json.loads(row["payload"])} for row in found.items]
        return Page(data, found.next_cursor)

    async def start(
        self,
        last_event_ids: Sequence[tuple[str, str | None]],
        after: str | None,
        caller: Caller,
    ) -> int:
        """Where a stream starts: after the first position given in ``last_event_ids`` (pairs of
        parameter name and value, e.g. the ``Last-Event-ID`` header then a query parameter for
        clients that cannot set headers), else after the event ``after``, else at the current
        end of the log."""
        head = await events.last_seq(self._db.reader)
        for name, raw in last_event_ids:
            if raw is None:
                continue
            if not is_decimal(raw) or int(raw) > head:
                raise ValidationFailed.field(name, "is not an event id this stream sent")
            return int(raw)
        if after is not None:
            return await self._seq_of("after", after, caller)
        return head

    async def stream(
        self, caller: Caller, query: Query, last_event_id: str | None
    ) -> AsyncIterator[bytes]:
        """The live stream an edge answers with, positioned and filtered as the query string
        says (``type``, ``last_event_id``, ``after``) and the ``Last-Event-ID`` header
        (``last_event_id``). Bad parameters raise :class:`ValidationFailed` here, before any
        byte is sent; a key with its quota of streams open gets :class:`QuotaExceeded`."""
        types = event_types(query)
        if self._open[caller.key_id] >= self._max_streams:
            raise QuotaExceeded.of(
                "REELHOOK_MAX_STREAMS_PER_KEY", self._max_streams, "event streams open"
            )
        after_seq = await self.start(
            [("Last-Event-ID", last_event_id), ("last_event_id", query.get("last_event_id"))],
            query.get("after"),
            caller,
        )
        return self.follow(caller, types, after_seq=after_seq)

    async def follow(
        self, caller: Caller, types: Sequence[str], *, after_seq: int
    ) -> AsyncIterator[bytes]:
        """The log from ``after_seq`` on, as SSE bytes, until the feed closes (shutdown).
        Counted against the caller's stream quota from its first byte until it is closed."""
        self._open[caller.key_id] += 1
        try:
            async for chunk in self._follow(caller, types, after_seq=after_seq):
                yield chunk
        finally:
            self._open[caller.key_id] -= 1
            if not self._open[caller.key_id]:
                del self._open[caller.key_id]

    async def _follow(
        self, caller: Caller, types: Sequence[str], *, after_seq: int
    ) -> AsyncIterator[bytes]:
        # An id-only block: the client's Last-Event-ID is right even before the first event
        # arrives.
        yield sse.message(id=str(after_seq), retry_ms=RECONNECT_MS)
        with self._feed.listen(caller.owner_filter, types) as listener:
            while not self._feed.closed:
                # Taken before the read: an event the tail finds after it still wakes the wait.
                wakes = listener.wakes
                after_seq = listener.skip_invisible(after_seq)
                recent = self._feed.since(after_seq)
                if recent is None:
                    # Behind what the shared tail keeps in memory: read the log itself.
                    seen = self._feed.head or after_seq
                    rows = await events.list_page(
                        self._db.reader,
                        after_seq=after_seq,
                        types=list(types),
                        owner_key_id=caller.owner_filter,
                        limit=STREAM_PAGE,
                    )
                    if rows:
                        yield b"".join(
                            render(row["seq"], row["id"], row["type"], row["payload"])
                            for row in rows
                        )
                        after_seq = rows[-1]["seq"]
                        if len(rows) == STREAM_PAGE:
                            continue
                    # Every event up to the tail's position was committed before the read.
                    after_seq = max(after_seq, seen)
                else:
                    visible = [event.message for event in recent if listener.may_see(event)]
                    if visible:
                        yield b"".join(visible)
                    if recent:
                        after_seq = recent[-1].seq
                # Woken while reading: look again at once; idle for the keep-alive: say so.
                if not await listener.wait(wakes, self._keepalive):
                    yield sse.comment("keep-alive")
