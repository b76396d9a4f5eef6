"""Work announcements: a commit says what kind of work it created; whoever acts on it is woken.

Writers never call the workers. The store itself notices, inside each write transaction, which
kinds of work the transaction created (SQLite: temporary triggers on the writer connection, see
:data:`TRIGGERS`), and once the transaction has committed it wakes every listener of those kinds.
A rolled-back transaction announces nothing. A listener gets a wake-up, never data: it reads the
store to learn what is due, so a missed or doubled wake-up costs at most one extra read.

This is the seam a second store implements the same way: PostgreSQL triggers calling
``pg_notify`` (delivered by the server only after commit) and a ``LISTEN`` connection that calls
:meth:`Announcements.deliver`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Protocol


class Work(StrEnum):
    """The kinds of work a commit can create, each with the workers that act on it."""

    EVENTS = "events"  # the event log grew: live event streams
    DELIVERIES = "deliveries"  # a delivery became due, or its subscription active: the dispatcher
    SUBMITS = "submits"  # a provider submit or held request is due sooner than before
    DEADLINES = "deadlines"  # a job with a deadline was stored: the deadline timer
    MIRRORS = "mirrors"  # output downloads were queued: the mirroring worker


Listener = Callable[[], None]


class WorkSource(Protocol):
    """What a store offers workers: a wake-up after each commit that created work of a kind."""

    def subscribe(self, kind: Work, listener: Listener) -> None:
        """Call ``listener`` (quick, never raising) after every commit that announced ``kind``."""
        ...


class Announcements:
    """Listeners by kind of work, and their wake-up once a store has committed."""

    def __init__(self) -> None:
        self._listeners: dict[Work, list[Listener]] = {kind: [] for kind in Work}

    def subscribe(self, kind: Work, listener: Listener) -> None:
        self._listeners[kind].append(listener)

    def deliver(self, kinds: Iterable[str]) -> None:
        """Wake every listener of ``kinds`` (work announced by a transaction that committed)."""
        for kind in kinds:
            for listener in self._listeners[Work(kind)]:
                listener()


ANNOUNCE_FUNCTION = "reelhook_announce"


def _trigger(name: str, event: str, table: str, when: str, kind: Work) -> str:
    return (
        f"CREATE TEMP TRIGGER IF NOT EXISTS announce_{name} {event} ON main.{table} "
        f"{'WHEN ' + when if when else ''} "
        f"BEGIN SELECT {ANNOUNCE_FUNCTION}('{kind.value}'); END"
    )


# Each row change that creates work, and its kind. Changes a worker makes for itself (a claim, a
# lease, an outcome it records) are left out where the condition allows, so they cost nothing.
TRIGGERS: tuple[str, ...] = (
    _trigger("events", "AFTER INSERT", "events", "", Work.EVENTS),
    _trigger(
        "new_deliveries", "AFTER INSERT", "deliveries", "NEW.status = 'pending'", Work.DELIVERIES
    ),
    # A resend, a recovery, or a retry the dispatcher scheduled itself (it is awake anyway).
    _trigger(
        "due_deliveries",
        "AFTER UPDATE OF status, next_attempt_at",
        "deliveries",
        "NEW.status = 'pending'",
        Work.DELIVERIES,
    ),
    # Deliveries of a subscription that is not active wait; they are due again once it is.
    _trigger(
        "active_subscriptions",
        "AFTER UPDATE OF status",
        "subscriptions",
        "NEW.status = 'active' AND OLD.status <> 'active'",
        Work.DELIVERIES,
    ),
    _trigger("deadlines", "AFTER INSERT", "jobs", "", Work.DEADLINES),
    # Only a submit due sooner than before: a worker's own lease moves it later.
    _trigger(
        "submits",
        "AFTER UPDATE OF next_submit_at",
        "jobs",
        "NEW.next_submit_at IS NOT NULL"
        " AND (OLD.next_submit_at IS NULL OR NEW.next_submit_at < OLD.next_submit_at)",
        Work.SUBMITS,
    ),
    _trigger("mirrors", "AFTER INSERT", "mirrors", "", Work.MIRRORS),
)
