"""One shared tail of the event log, fanned out in memory to every live stream.

Every commit that appended events calls :meth:`EventFeed.appended` (see
:mod:`service.storage.announcements`), saying how many events and who may see them: SQLite's
commits in this process, and on PostgreSQL every node's, through the commit's ``NOTIFY``. When no
open stream may see any of them the tail does not read them yet: it reads them once such events
have piled up (half of what it keeps in memory), or when a stream opens (it may see them) or an
event a stream may see is committed. Otherwise (and for a commit it is told nothing about: an
event without its owner, or more owners than a notification holds) one task
(:meth:`EventFeed.run`) reads the new events once, keeps the most recent in memory (each
rendered as an SSE message once, when a stream first sends it), and wakes only the streams that
may see one of them (their owner, their type filter). So an idle stream costs nothing: no query,
no wake-up, whatever else commits (docs/architecture.md, "A delivery", step 5).

A stream registers with :meth:`EventFeed.listen` before it reads, so an event committed between
its read and its wait still wakes it. A stream that is further behind than the events kept in
memory reads the log itself until it has caught up. Nothing polls.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum

import anyio

from service.core import sse
from service.core.jsonutil import dumps
from service.core.worker import Wakeup
from service.storage import events
from service.storage.announcements import Appended, Seer
from service.storage.database import Connection

KEEP = 1024
"""Recent events kept in memory for the streams (one message each, rendered once)."""


class TailEvent:
    """An event the tail read, rendered as its SSE message only when a stream first sends it.

    Most events are seen by no stream (issue 18's idle streams are another key's): rendering
    every one (a JSON parse and dump) was most of the tail's CPU (docs/performance.md, "Idle
    streams")."""

    __slots__ = ("_id", "_message", "_payload", "owner_key_id", "seq", "type")

    def __init__(
        self, seq: int, type_: str, owner_key_id: str | None, event_id: str, payload: bytes | str
    ) -> None:
        self.seq = seq
        self.type = type_
        # The API key whose job it is (None: not a job's event, seen by admin keys only).
        self.owner_key_id = owner_key_id
        self._id = event_id
        self._payload = payload
        self._message: bytes | None = None

    @property
    def rendered(self) -> bool:
        """Whether :attr:`message` was made (some stream sent this event)."""
        return self._message is not None

    @property
    def message(self) -> bytes:
        """The SSE message (:func:`render`), made once, on first use."""
        if self._message is None:
            self._message = render(self.seq, self._id, self.type, self._payload)
        return self._message


def render(seq: int, event_id: str, type_: str, payload: bytes | str) -> bytes:
    """An event as one SSE message: ``id`` its position, ``event`` its type, ``data`` the object
    GET /v1/events lists."""
    return sse.message(
        id=str(seq), event=type_, data=dumps({"id": event_id, **json.loads(payload)})
    )


class Waited(Enum):
    """How :meth:`Listener.wait` ended."""

    WOKEN = "woken"  # an event it may see was read (or the feed closed)
    IDLE = "idle"  # the time ran out: a keep-alive is due
    GONE = "gone"  # the stream's client went away


class Listener:
    """One stream's interest: what it may see, and the wake-up the tail sets for it."""

    def __init__(self, feed: EventFeed, owner_key_id: str | None, types: Sequence[str]) -> None:
        self.owner_key_id = owner_key_id
        self.types = frozenset(types)
        self.wakes = 0
        self._feed = feed
        # Only while the stream waits: what wake() cancels to end the wait.
        self._waiting: anyio.CancelScope | None = None
        # Every event after this position has gone through the tail while this stream listened
        # (None: nothing is known, e.g. after the tail failed).
        self._tracked_from: int | None = None

    def skip_invisible(self, after_seq: int) -> int:
        """``after_seq`` moved past the events the tail found this stream may not see.

        Without it an idle stream (one that sees nothing that is being logged) kept its old
        position; once more than the tail keeps in memory had been logged, every keep-alive
        wake-up of every such stream read the log itself from that position: 1,000 idle streams
        beside 300 callbacks/s made API reads 8x slower (bench/results/latest.md, isolation
        scenario b). It asks the feed for the last event this stream may see, so the tail does
        no work per idle stream."""
        start, head = self._tracked_from, self._feed.head
        if start is None or head is None or after_seq < start or after_seq >= head:
            return after_seq
        if self._feed.last_visible_to(self) <= after_seq:
            return head
        return after_seq

    def track_from(self, seq: int | None) -> None:
        """The tail reads on from ``seq`` (None: it stopped; nothing is known)."""
        self._tracked_from = seq

    def may_see(self, event: TailEvent) -> bool:
        if self.types and event.type not in self.types:
            return False
        return self.owner_key_id is None or event.owner_key_id == self.owner_key_id

    def wake(self) -> None:
        self.wakes += 1
        if self._waiting is not None:
            self._waiting.cancel()

    async def wait(
        self, wakes_seen: int, idle: float, gone: Callable[[], Awaitable[object]] | None = None
    ) -> Waited:
        """Wait until woken after the ``wakes_seen``-th wake-up (at once if already), at most
        ``idle`` seconds, or (with ``gone``, which returns when the stream's client has gone)
        until the client goes.

        The stream's own task does the waiting, in ``gone`` itself when given: a stream needs
        no second task listening for its client's disconnection (Starlette's StreamingResponse
        runs one per stream), which with 1,000 open streams was over a quarter of the objects every
        full garbage collection walks (docs/performance.md, "Idle streams")."""
        if self.wakes == wakes_seen:
            with anyio.move_on_after(idle) as scope:
                self._waiting = scope
                try:
                    if gone is None:
                        await anyio.sleep_forever()
                    else:
                        await gone()
                finally:
                    self._waiting = None
            if not scope.cancel_called and self.wakes == wakes_seen:
                return Waited.GONE
        return Waited.WOKEN if self.wakes != wakes_seen else Waited.IDLE


class _LastSeen:
    """The position of the last event the tail read, by what decides who may see it: its owner
    and its type. Answers "the last event this stream may see" in a few lookups, however many
    streams listen."""

    def __init__(self) -> None:
        self.any = 0
        self.by_type: dict[str, int] = {}
        self.by_owner: dict[str | None, int] = {}
        self.by_owner_type: dict[tuple[str | None, str], int] = {}

    def add(self, event: TailEvent) -> None:
        self.any = event.seq
        self.by_type[event.type] = event.seq
        self.by_owner[event.owner_key_id] = event.seq
        self.by_owner_type[(event.owner_key_id, event.type)] = event.seq

    def visible_to(self, listener: Listener) -> int:
        owner, types = listener.owner_key_id, listener.types
        if owner is None:  # an admin key's stream sees every owner's events
            if not types:
                return self.any
            return max((self.by_type.get(t, 0) for t in types), default=0)
        if not types:
            return self.by_owner.get(owner, 0)
        return max((self.by_owner_type.get((owner, t), 0) for t in types), default=0)


class EventFeed:
    def __init__(self, keep: int = KEEP) -> None:
        self._recent: deque[TailEvent] = deque(maxlen=keep)
        # Events no open stream may see that the tail leaves unread before it reads them all
        # at once. Reading after every commit was most of what 1,000 idle streams cost the
        # event loop at 300 callbacks/s (docs/performance.md, "Idle streams"); reading them
        # at all keeps the tail's position and what was logged per owner and type exact, and
        # the bound keeps that read within one page of the tail's.
        self._unread_max = max(1, keep // 2)
        # The position the tail has read up to; None while no stream listens (nothing is read).
        self._head: int | None = None
        self._listeners: set[Listener] = set()
        # The same streams by the owner whose events they see (None: admin keys, every owner's),
        # so a batch of events is matched against its owners' streams only.
        self._by_owner: dict[str | None, set[Listener]] = {}
        self._last = _LastSeen()
        # How many streams listen for each (owner, type) (type None: every type), so a commit's
        # seers are matched in a few lookups however many streams listen.
        self._wants: Counter[tuple[str | None, str | None]] = Counter()
        # Events committed after _head that no stream listening may see, not read yet (a
        # count, for the bound _unread_max; the tail reads them with the next read).
        self._unread = 0
        self._wakeup = Wakeup()
        self._closed = False
        self.reads = 0  # tail reads, for tests and metrics
        self.wakeups = 0  # times the tail task woke, for tests
        self.looked_at = 0  # streams matched against a batch of events, for tests

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The streams listening now."""
        return tuple(self._listeners)

    @property
    def unread(self) -> int:
        """How many events committed after :attr:`head` the tail left unread (no stream
        listening may see them), as far as it was told."""
        return self._unread

    @property
    def head(self) -> int | None:
        """Every event up to this position is in memory or has been read past by the tail."""
        return self._head

    def last_visible_to(self, listener: Listener) -> int:
        """The position of the last event the tail read that ``listener`` may see (0: none)."""
        return self._last.visible_to(listener)

    def open(self) -> None:
        """Accept streams (again): called when the lifespan starts."""
        self._closed = False

    def appended(self, what: Appended | None) -> None:
        """A commit appended events: ``what`` says how many and who may see them (None: not
        known). Cheap; called after every such commit.

        Events no listening stream may see are left unread, up to half of what the tail keeps
        in memory: they stay after the tail's position, and the next read (for an event a
        stream may see, a stream opening, or that bound) reads them all, in order."""
        if (
            what is not None
            and self._head is not None
            and self._unread + what.count < self._unread_max
            and not any(self._wanted(seer) for seer in what.seers)
        ):
            self._unread += what.count
            return
        self.notify()

    def _wanted(self, seer: Seer) -> bool:
        """Whether a listening stream may see an event of this owner and type."""
        owner, type_ = seer
        wants = self._wants
        if wants[(None, None)] or wants[(None, type_)]:
            return True  # an admin key's stream
        return owner is not None and bool(wants[(owner, None)] or wants[(owner, type_)])

    def notify(self) -> None:
        """The log may have grown. Cheap; safe to call often.

        While no stream listens and the tail has stopped (nothing in memory), the tail is not
        woken: it would find no one to tell and stop again, and every ingest commit paid for
        that wake-up (docs/performance.md §4). The first stream to listen starts it."""
        if self._listeners or self._head is not None:
            self._wakeup.set()

    def close(self) -> None:
        """End every stream: they finish their response cleanly instead of waiting forever."""
        self._closed = True
        for listener in self._listeners:
            listener.wake()

    @contextmanager
    def listen(self, owner_key_id: str | None, types: Sequence[str]) -> Iterator[Listener]:
        """Register a stream for the duration of the block."""
        listener = Listener(self, owner_key_id, types)
        listener.track_from(self._head)
        self._listeners.add(listener)
        self._by_owner.setdefault(owner_key_id, set()).add(listener)
        wants: list[tuple[str | None, str | None]] = [(owner_key_id, t) for t in listener.types]
        wants = wants or [(owner_key_id, None)]
        self._wants.update(wants)
        if self._head is None or self._unread:
            # The tail starts reading; or it left events unread that no stream could see then,
            # and this one may: it reads them now, and wakes this stream for them.
            self._wakeup.set()
        try:
            yield listener
        finally:
            self._wants.subtract(wants)
            for want in wants:
                if self._wants[want] <= 0:
                    del self._wants[want]
            self._listeners.discard(listener)
            same_owner = self._by_owner.get(owner_key_id)
            if same_owner is not None:
                same_owner.discard(listener)
                if not same_owner:
                    del self._by_owner[owner_key_id]

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
            self.wakeups += 1
            if not self._listeners:
                # Nobody to tell: stop tailing; the next stream to listen starts it again.
                self._forget()
                continue
            try:
                await self._read(reader)
            except Exception:
                # The streams read the log themselves meanwhile (since() answers None).
                self._forget()
                for listener in self._listeners:
                    listener.track_from(None)
                await anyio.sleep(1)
                self._wakeup.set()

    def _forget(self) -> None:
        """Stop tailing: nothing is in memory, nothing is known about what was logged."""
        self._head = None
        self._unread = 0
        self._recent.clear()
        self._last = _LastSeen()

    async def _read(self, reader: Connection) -> None:
        if self._head is None:
            self._unread = 0
            self._head = await events.last_seq(reader)
            self._recent.clear()
            self._last = _LastSeen()
            for listener in self._listeners:
                listener.track_from(self._head)
                listener.wake()  # each catches up from the log, then follows the tail
            return
        while True:
            # Whatever was left unread is committed, so this read finds it (a commit telling
            # of more while it runs counts again: the count only bounds).
            self._unread = 0
            rows = await events.tail(reader, after_seq=self._head, limit=KEEP)
            self.reads += 1
            if not rows:
                return
            new = [
                TailEvent(row["seq"], row["type"], row["owner_key_id"], row["id"], row["payload"])
                for row in rows
            ]
            self._recent.extend(new)
            for event in new:
                self._last.add(event)
            self._head = new[-1].seq
            # Only the streams of these events' owners, and admin keys' streams, may see any
            # of them; the others are not even looked at (their skip_invisible asks _last).
            owners = {event.owner_key_id for event in new} | {None}
            for owner in owners:
                for listener in self._by_owner.get(owner, ()):
                    self.looked_at += 1
                    if any(listener.may_see(event) for event in new):
                        listener.wake()
            if len(rows) < KEEP:
                return
