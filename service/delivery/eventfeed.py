"""One shared tail of the event log, fanned out in memory to every live stream.

Every commit that appended events calls :meth:`EventFeed.notify` (it listens for ``Work.EVENTS``,
see :mod:`service.storage.announcements`). One task (:meth:`EventFeed.run`) then reads the new
events once, renders each as an SSE message once, keeps the most recent in memory, and wakes only
the streams that may see one of them (their owner, their type filter). So an idle stream costs
nothing: no query, no wake-up, whatever else commits (docs/architecture.md, "Streams").

A stream registers with :meth:`EventFeed.listen` before it reads, so an event committed between
its read and its wait still wakes it. A stream that is further behind than the events kept in
memory reads the log itself until it has caught up. Nothing polls.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import anyio

from service.core import sse
from service.core.jsonutil import dumps
from service.core.worker import Wakeup
from service.storage import events
from service.storage.database import Connection

KEEP = 1024
"""Recent events kept in memory for the streams (one message each, rendered once)."""


@dataclass(frozen=True, slots=True)
class TailEvent:
    seq: int
    type: str
    # The API key whose job it is (None: not a job's event, seen by admin keys only).
    owner_key_id: str | None
    message: bytes


def render(seq: int, event_id: str, type_: str, payload: bytes | str) -> bytes:
    """An event as one SSE message: ``id`` its position, ``event`` its type, ``data`` the object
    GET /v1/events lists."""
    return sse.message(
        id=str(seq), event=type_, data=dumps({"id": event_id, **json.loads(payload)})
    )


class Listener:
    """One stream's interest: what it may see, and the wake-up the tail sets for it."""

    def __init__(self, owner_key_id: str | None, types: Sequence[str]) -> None:
        self.owner_key_id = owner_key_id
        self.types = frozenset(types)
        self.wakes = 0
        # Created only while the stream waits: anyio events need a running event loop.
        self._event: anyio.Event | None = None
        # (start, end): the tail found none of the events start+1..end visible to this stream.
        self._clean: tuple[int, int] | None = None

    def skip_invisible(self, after_seq: int) -> int:
        """``after_seq`` moved past the events the tail found this stream may not see.

        Without it an idle stream (one that sees nothing that is being logged) kept its old
        position; once more than the tail keeps in memory had been logged, every keep-alive
        wake-up of every such stream read the log itself from that position: 1,000 idle streams
        beside 300 callbacks/s made API reads 8x slower (bench/results/latest.md, isolation
        scenario b)."""
        clean = self._clean
        if clean is not None and clean[0] <= after_seq < clean[1]:
            return clean[1]
        return after_seq

    def track_from(self, seq: int | None) -> None:
        """The tail reads on from ``seq`` (None: it stopped; nothing is known)."""
        self._clean = None if seq is None else (seq, seq)

    def passed(self, first: int, last: int) -> None:
        """The tail read events ``first+1..last`` and this stream may see none of them."""
        if self._clean is not None and self._clean[1] == first:
            self._clean = (self._clean[0], last)

    def may_see(self, event: TailEvent) -> bool:
        if self.types and event.type not in self.types:
            return False
        return self.owner_key_id is None or event.owner_key_id == self.owner_key_id

    def wake(self) -> None:
        self.wakes += 1
        if self._event is not None:
            self._event.set()

    async def wait(self, wakes_seen: int, idle: float) -> bool:
        """Wait until woken after the ``wakes_seen``-th wake-up (at once if already), at most
        ``idle`` seconds; False when the time ran out without one."""
        if self.wakes == wakes_seen:
            self._event = anyio.Event()
            try:
                with anyio.move_on_after(idle):
                    await self._event.wait()
            finally:
                self._event = None
        return self.wakes != wakes_seen


class EventFeed:
    def __init__(self, keep: int = KEEP) -> None:
        self._recent: deque[TailEvent] = deque(maxlen=keep)
        # The position the tail has read up to; None while no stream listens (nothing is read).
        self._head: int | None = None
        self._listeners: set[Listener] = set()
        self._wakeup = Wakeup()
        self._closed = False
        self.reads = 0  # tail reads, for tests and metrics

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The streams listening now."""
        return tuple(self._listeners)

    @property
    def head(self) -> int | None:
        """Every event up to this position is in memory or has been read past by the tail."""
        return self._head

    def open(self) -> None:
        """Accept streams (again): called when the lifespan starts."""
        self._closed = False

    def notify(self) -> None:
        """The log may have grown. Cheap; safe to call often."""
        self._wakeup.set()

    def close(self) -> None:
        """End every stream: they finish their response cleanly instead of waiting forever."""
        self._closed = True
        for listener in self._listeners:
            listener.wake()

    @contextmanager
    def listen(self, owner_key_id: str | None, types: Sequence[str]) -> Iterator[Listener]:
        """Register a stream for the duration of the block."""
        listener = Listener(owner_key_id, types)
        listener.track_from(self._head)
        self._listeners.add(listener)
        if self._head is None:
            self._wakeup.set()  # the tail starts reading
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    def since(self, after_seq: int) -> list[TailEvent] | None:
        """The events in memory after ``after_seq``; None when some of them are no longer (or
        not yet) in memory and the stream must read the log itself."""
        if self._head is None:
            return None
        if after_seq >= self._head:
            return []
        first = self._recent[0].seq if self._recent else self._head + 1
        if after_seq < first - 1:
            return None
        return [event for event in self._recent if event.seq > after_seq]

    async def run(self, reader: Connection) -> None:
        """Tail the log until cancelled: one read per batch of commits, whatever the number of
        streams, and none at all while no stream listens."""
        while True:
            await self._wakeup.wait(None)
            if not self._listeners:
                # Nobody to tell: stop tailing; the next stream to listen starts it again.
                self._head = None
                self._recent.clear()
                continue
            try:
                await self._read(reader)
            except Exception:
                # The streams read the log themselves meanwhile (since() answers None).
                self._head = None
                self._recent.clear()
                for listener in self._listeners:
                    listener.track_from(None)
                await anyio.sleep(1)
                self._wakeup.set()

    async def _read(self, reader: Connection) -> None:
        if self._head is None:
            self._head = await events.last_seq(reader)
            self._recent.clear()
            for listener in self._listeners:
                listener.track_from(self._head)
                listener.wake()  # each catches up from the log, then follows the tail
            return
        while True:
            rows = await events.tail(reader, after_seq=self._head, limit=KEEP)
            self.reads += 1
            if not rows:
                return
            new = [
                TailEvent(
                    row["seq"],
                    row["type"],
                    row["owner_key_id"],
                    render(row["seq"], row["id"], row["type"], row["payload"]),
                )
                for row in rows
            ]
            self._recent.extend(new)
            first, self._head = self._head, new[-1].seq
            for listener in self._listeners:
                if any(listener.may_see(event) for event in new):
                    listener.track_from(self._head)
                    listener.wake()
                else:
                    listener.passed(first, self._head)
            if len(rows) < KEEP:
                return
