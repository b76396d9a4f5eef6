"""Reading the event log: a page of it, and following it live as Server-Sent Events.

Each streamed event is one SSE message: ``id`` is its position in the log (``seq``), ``event`` its
type and ``data`` the same JSON object a page lists. A client that reconnects with
``Last-Event-ID`` gets every later event exactly once. The stream reads the log, then sleeps until
a commit wakes it (see :mod:`service.delivery.eventfeed`) or a keep-alive comment is due.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import anyio

from service.access.callers import Caller
from service.core import params, sse
from service.core.clock import Clock, system_clock
from service.core.errors import QuotaExceeded, ValidationFailed
from service.core.ids import new_id
from service.core.models import EVENT_TYPES
from service.core.paging import Page, page_of
from service.core.params import Query, is_decimal
from service.delivery.eventfeed import EventFeed, Waited, render
from service.storage import events, quotas
from service.storage.database import DATABASE_ERRORS, Database

log = logging.getLogger(__name__)

STREAM_PAGE = 200
RECONNECT_MS = 2000
KEEPALIVE_SLOTS = 16
_GOLDEN = 0.6180339887498949  # (sqrt(5) - 1) / 2: successive multiples spread evenly over [0, 1)


def first_keepalive(number: int, interval: float) -> float:
    """When the ``number``-th stream followed sends its first keep-alive: after 50-100 % of
    ``interval``, at one of ``KEEPALIVE_SLOTS`` instants of that half, successive streams spread
    evenly over them (multiples of the golden ratio, modulo 1). Streams opened together then do
    not all wake in the same instant (1,000 keep-alives in one burst held the loop for ~90 ms),
    nor each alone: a keep-alive sent alone cost 257 µs of CPU against 87 µs in a batch
    (docs/performance.md §7)."""
    slot = int((number * _GOLDEN) % 1.0 * KEEPALIVE_SLOTS)
    return interval * (0.5 + slot / KEEPALIVE_SLOTS / 2)


def event_types(query: Query) -> list[str]:
    """The ``type`` filter: comma-separated event types (empty: every type)."""
    return params.choices_list(query, "type", EVENT_TYPES, "event type")


class EventLog:
    """The event log's pages and streams. The stream quota (``max_streams_per_key``) is counted
    in memory for this process and, on PostgreSQL, in the store for the cluster
    (``stream_leases``): a key holds at most that many streams over every node."""

    def __init__(
        self,
        db: Database,
        feed: EventFeed,
        *,
        keepalive: float,
        max_streams_per_key: int = 100,
        clock: Clock = system_clock,
    ) -> None:
        self._db = db
        self._feed = feed
        self._keepalive = keepalive
        self._max_streams = max_streams_per_key
        self._clock = clock
        # Open streams per API key on this node (the stream quota).
        self._open: Counter[str] = Counter()
        self._followed = 0  # streams followed so far: spreads their keep-alives (follow)

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
        self,
        caller: Caller,
        query: Query,
        last_event_id: str | None,
        gone: Callable[[], Awaitable[object]] | None = None,
    ) -> EventStream:
        """The live stream an edge answers with, positioned and filtered as the query string
        says (``type``, ``last_event_id``, ``after``) and the ``Last-Event-ID`` header
        (``last_event_id``). Bad parameters raise :class:`ValidationFailed` here, before any
        byte is sent; a key with its quota of streams open (over every node) gets
        :class:`QuotaExceeded`, also before any byte, so the edge can still answer 429. The
        stream returned holds its place in the quota until it is closed, which its edge must
        do however the response ends (a HEAD closes it at once). ``gone``, when given, returns
        once the client has gone: the stream then ends by itself (see :meth:`follow`)."""
        types = event_types(query)
        after_seq = await self.start(
            [("Last-Event-ID", last_event_id), ("last_event_id", query.get("last_event_id"))],
            query.get("after"),
            caller,
        )
        # Counted in memory first, with no await between the look and the count, so streams
        # opened at once on this node cannot all pass the look before any is counted.
        if self._open[caller.key_id] >= self._max_streams:
            raise self._over_quota()
        self._open[caller.key_id] += 1
        lease = None
        try:
            if self._db.dialect == "postgresql":
                lease = await self._lease(caller)
                if lease is None:
                    raise self._over_quota()
        except BaseException:
            self._give_back(caller.key_id)
            raise

        async def release() -> None:
            self._give_back(caller.key_id)
            if lease is not None:
                await self._release(lease)

        return EventStream(self.follow(caller, types, after_seq=after_seq, gone=gone), release)

    def _give_back(self, key_id: str) -> None:
        self._open[key_id] -= 1
        if not self._open[key_id]:
            del self._open[key_id]

    def _over_quota(self) -> QuotaExceeded:
        return QuotaExceeded.of(
            "REELHOOK_MAX_STREAMS_PER_KEY", self._max_streams, "event streams open"
        )

    async def _lease(self, caller: Caller) -> str | None:
        """Count a stream of ``caller``'s in the store (PostgreSQL), unless the key already holds
        its quota over every node: then None. Counted and added under the key's lock."""
        lease = new_id("stream")
        async with self._db.transaction(durable=False) as conn:
            await quotas.lock_key(conn, quotas.STREAMS, caller.key_id)
            if await quotas.open_streams(conn, caller.key_id) >= self._max_streams:
                return None
            await quotas.add_stream(
                conn, lease, key_id=caller.key_id, node_id=self._db.node_id, now=self._clock()
            )
        return lease

    async def _release(self, lease: str) -> None:
        # Shielded: a stream ends by cancellation when its client goes. Should the store be
        # unreachable, the lease goes with this node's row (docs/scaling.md).
        with anyio.CancelScope(shield=True):
            try:
                async with self._db.transaction(durable=False) as conn:
                    await quotas.remove_stream(conn, lease)
            except DATABASE_ERRORS:
                log.warning("could not release stream lease %s", lease, exc_info=True)

    async def follow(
        self,
        caller: Caller,
        types: Sequence[str],
        *,
        after_seq: int,
        gone: Callable[[], Awaitable[object]] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The log from ``after_seq`` on, as SSE bytes, until the feed closes (shutdown) or,
        with ``gone`` (which returns once the client has gone), until the client goes: it is
        watched while the stream waits, in the stream's own task. Not counted against any
        quota: :meth:`stream` is what counts."""
        # An id-only block: the client's Last-Event-ID is right even before the first event
        # arrives.
        yield sse.message(id=str(after_seq), retry_ms=RECONNECT_MS)
        # Streams opened together (a client reconnecting a thousand) would otherwise send
        # their keep-alives in the same instant, every interval: a thousand wake-ups and
        # writes in one burst on the loop (docs/performance.md, "Idle streams").
        self._followed += 1
        idle = first_keepalive(self._followed, self._keepalive)
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
                waited = await listener.wait(wakes, idle, gone)
                if waited is Waited.GONE:
                    return
                if waited is Waited.IDLE:
                    yield sse.comment("keep-alive")
                idle = self._keepalive


class EventStream:
    """An open event stream: its SSE bytes, and its place in its key's stream quota, held from
    :meth:`EventLog.stream` until :meth:`close` (idempotent). The place is given back by
    ``close`` rather than by the bytes' generator, which never runs its cleanup when it is never
    started (a HEAD, or a client gone before the first byte)."""

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], release: Callable[[], Awaitable[None]]
    ) -> None:
        self._chunks = chunks
        self._release = release
        self._closed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def close(self) -> None:
        """End the stream and give its place back."""
        if self._closed:
            return
        self._closed = True
        try:
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()
        finally:
            await self._release()
