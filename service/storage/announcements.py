"""Work announcements: a commit says what kind of work it created; whoever acts on it is woken.

Domain code never calls the workers. The store's own write functions (``storage/*.py``) that
create work say so with :func:`announce` inside the transaction — appending events and their
deliveries, making deliveries due again, re-enabling a subscription, storing a job, scheduling a
submit, queueing a download — and once the transaction has committed, the store wakes every
listener of the kinds it announced. A rolled-back transaction announces nothing. A listener gets a
wake-up, never data: it reads the store to learn what is due, so a spurious wake-up costs one read.

Announcing is a set insertion per statement, not a trigger per row: a fan-out inserts thousands
of deliveries, and a trigger would add its cost to every one of them.

This is the seam a second store implements the same way: PostgreSQL's write functions calling
``NOTIFY`` (delivered by the server only after commit) and a ``LISTEN`` connection that calls
:meth:`Announcements.deliver`.

One exception to "never data": a commit that appended events says, when the process that
committed it knows, how many and who may see them (:class:`Appended`), so the live streams'
shared tail need not read the log after a commit whose events no open stream may see
(docs/performance.md, "Idle streams"). On PostgreSQL, where every commit is heard through
``NOTIFY`` (this node's too), a commit says nothing more than before: the tail reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Work(StrEnum):
    """The kinds of work a commit can create, each with the workers that act on it."""

    EVENTS = "events"  # the event log grew: live event streams
    DELIVERIES = "deliveries"  # a delivery became due, or its subscription active: the dispatcher
    FANOUTS = "fanouts"  # a deferred fan-out was stored: the dispatcher's expansion
    SUBMITS = "submits"  # a provider submit or held request is due sooner than before
    DEADLINES = "deadlines"  # a job with a deadline was stored: the deadline timer
    MIRRORS = "mirrors"  # output downloads were queued: the mirroring worker
    # PostgreSQL: the leader's sweep declared nodes dead: the leader recovers the Segmind requests
    # they held (their deliveries and submits were handed back as DELIVERIES and SUBMITS).
    NODES = "nodes"


Listener = Callable[[], None]

Seer = tuple[str | None, str]
"""Who may see an event in the live streams: the API key owning its job (None for an event of
no job, which admin keys' streams see) and its type."""


@dataclass(frozen=True, slots=True)
class Appended:
    """What one commit appended to the event log: ``count`` events, seen by ``seers``."""

    count: int
    seers: frozenset[Seer]


AppendedListener = Callable[[Appended | None], None]


class WorkSource(Protocol):
    """What a store offers workers: a wake-up after each commit that created work of a kind."""

    def subscribe(self, kind: Work, listener: Listener) -> None:
        """Call ``listener`` (quick, never raising) after every commit that announced ``kind``."""
        ...


class Announcements:
    """Listeners by kind of work, and their wake-up once a store has committed."""

    def __init__(self) -> None:
        self._listeners: dict[Work, list[Listener]] = {kind: [] for kind in Work}
        self._appended: list[AppendedListener] = []

    def subscribe(self, kind: Work, listener: Listener) -> None:
        self._listeners[kind].append(listener)

    def subscribe_appended(self, listener: AppendedListener) -> None:
        """Call ``listener`` after every commit that announced ``Work.EVENTS``, with what it
        appended when that is known (None: not known)."""
        self._appended.append(listener)

    def deliver(self, kinds: Iterable[Work], appended: Appended | None = None) -> None:
        """Wake every listener of ``kinds`` (work announced by a transaction that committed);
        ``appended``: what it appended to the event log, when known."""
        for kind in kinds:
            for listener in self._listeners[kind]:
                listener()
            if kind is Work.EVENTS:
                for heard in self._appended:
                    heard(appended)


class Announcing(Protocol):
    """A connection that may collect what its open write transaction announces: a set on a
    store's write transaction (:class:`service.storage.database.Connection`), None elsewhere."""

    announced: set[Work] | None
    appended: list[Seer | None] | None


def announce(conn: Announcing, kind: Work) -> None:
    """Inside a write transaction on ``conn``: its commit creates work of ``kind``. Cheap (a set
    insertion); the store wakes the listeners after commit (PostgreSQL: ``pg_notify`` issued just
    before ``COMMIT``, which the server delivers only if it commits, to every node). A connection
    outside a store transaction (a script's own, the reader) announces nothing."""
    if conn.announced is not None:
        conn.announced.add(kind)
        if kind is Work.EVENTS and conn.appended is not None:
            conn.appended.append(None)  # events whose seers are not known


def announce_appended(conn: Announcing, seers: Iterable[Seer | None]) -> None:
    """:func:`announce` ``Work.EVENTS`` for events appended in ``conn``'s write transaction,
    one entry per event: who may see it (None: not known)."""
    if conn.announced is not None:
        conn.announced.add(Work.EVENTS)
        if conn.appended is not None:
            conn.appended.extend(seers)


def appended_of(seers: list[Seer | None] | None) -> Appended | None:
    """What a committed transaction appended, from its ``appended`` entries; None when any
    event's seers are not known (or none was recorded)."""
    if not seers or None in seers:
        return None
    return Appended(len(seers), frozenset(seer for seer in seers if seer is not None))
