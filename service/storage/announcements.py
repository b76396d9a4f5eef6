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
``NOTIFY`` (this node's too), that travels in the notification's payload
(:func:`appended_payload`), to every node.
"""

from __future__ import annotations

import json
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


APPENDED_PREFIX = "events:"
"""How a notification saying what a commit appended begins (PostgreSQL's ``NOTIFY`` payloads)."""

APPENDED_MOST = 7_000
"""The longest such payload: PostgreSQL refuses one of 8,000 bytes or more. A commit whose
appended events would say more (many owners and types) is announced plainly: the tail reads."""


def appended_payload(appended: Appended | None) -> str | None:
    """``appended`` as a ``NOTIFY`` payload (:data:`APPENDED_PREFIX` and JSON), or None when it
    is not known or would not fit in :data:`APPENDED_MOST` bytes."""
    if appended is None:
        return None
    seers = sorted(appended.seers, key=lambda seer: (seer[0] or "", seer[1]))
    payload = APPENDED_PREFIX + json.dumps([appended.count, seers], separators=(",", ":"))
    return payload if len(payload.encode()) <= APPENDED_MOST else None


def appended_from(payload: str) -> Appended | None:
    """The :class:`Appended` an :func:`appended_payload` says; None for anything else."""
    if not payload.startswith(APPENDED_PREFIX):
        return None
    try:
        count, seers = json.loads(payload[len(APPENDED_PREFIX) :])
        return Appended(
            int(count),
            frozenset((owner if owner is None else str(owner), str(kind)) for owner, kind in seers),
        )
    except (ValueError, TypeError):
        return None


def notifications(kinds: Iterable[Work], seers: list[Seer | None] | None) -> list[str]:
    """The ``NOTIFY`` payloads of a commit that announced ``kinds`` and appended events seen by
    ``seers``: each kind, and just before ``events``, what the events were when that is known
    (:func:`appended_payload`). The plain ``events`` stays for nodes that read kinds only (a
    version before this one, during a rolling restart); a node that read the description skips
    the plain twin right after it (:class:`AppendedTwins`)."""
    payloads = [kind.value for kind in sorted(kinds)]
    if Work.EVENTS.value in payloads:
        described = appended_payload(appended_of(seers))
        if described is not None:
            payloads.insert(payloads.index(Work.EVENTS.value), described)
    return payloads


class AppendedTwins:
    """Reads :func:`notifications` in the order a listener hears them. PostgreSQL delivers one
    transaction's notifications together and in the order sent, so a plain ``events`` right
    after a description is the same commit's twin."""

    def __init__(self) -> None:
        self._described = False

    def read(self, payload: str) -> tuple[Work, Appended | None] | None:
        """The kind of work ``payload`` announces and what it appended; None for a twin or a
        payload that names nothing."""
        after_description, self._described = self._described, False
        appended = appended_from(payload)
        if appended is not None:
            self._described = True
            return Work.EVENTS, appended
        if payload == Work.EVENTS.value and after_description:
            return None
        try:
            return Work(payload), None
        except ValueError:
            return None
