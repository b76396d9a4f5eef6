"""SQL for the delivery outbox: claiming due rows under a lease, recording attempt outcomes,
releasing leases, resending, and reading the delivery log."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.ids import new_ids
from service.core.models import DeliveryStatus
from service.storage.announcements import Work, announce
from service.storage.database import Connection, Row, marks, padded


@dataclass(slots=True)
class Claimed:
    """A delivery claimed for one attempt, with everything needed to send it. Not changed
    once made (``dataclasses.replace`` makes another).

    Neither this nor :class:`AttemptOutcome` is ``frozen``: a frozen dataclass's ``__init__``
    sets each field through ``object.__setattr__``, ~3 µs more for a dozen fields, and one of
    each is made per delivery (docs/performance.md §4)."""

    id: str
    event_id: str
    subscription_id: str
    attempt: int
    url: str
    secrets: tuple[str, ...]
    headers: dict[str, str]
    payload: bytes
    token: int
    """The claim's fencing token: its outcome is recorded only while the claim is current."""
    manual: bool = False
    template: str | None = None
    content_type: str = "application/json"


@dataclass(slots=True)
class AttemptOutcome:
    """The result of one attempt and what happens next.

    ``status`` is the delivery's new state: succeeded, pending (retry at ``next_attempt_at``)
    or failed (retries exhausted). ``delete_subscription`` is set on 410.
    """

    delivery_id: str
    subscription_id: str
    attempted_at: float
    latency_ms: float
    status: DeliveryStatus
    token: int
    """The fencing token of the claim this attempt was made under (:attr:`Claimed.token`):
    required, so no outcome can be written without naming its claim (a default would let a
    forgotten token match an unclaimed row)."""
    status_code: int | None = None
    error: str | None = None
    response_body: bytes | None = None
    next_attempt_at: float | None = None
    delete_subscription: bool = False


@dataclass(frozen=True, slots=True)
class Ready:
    """A subscription with pending deliveries: when the earliest is due, how many are due now
    (counted up to the cap it was asked with), and whether it delivers in order (FIFO)."""

    subscription_id: str
    due: float
    due_now: int
    fifo: bool = False


async def due_subscriptions(
    conn: Connection, *, skip: Collection[str], now: float, cap: int, limit: int
) -> list[Ready]:
    """Active subscriptions with a pending delivery, earliest due first, at most ``limit``;
    subscriptions in ``skip`` (saturated ones) are left out. ``due_now`` counts the deliveries
    due at ``now``, stopping at ``cap``.

    One seek per active subscription into ``deliveries_pending`` for the earliest (the first
    entry of its stretch) and at most ``cap`` entries read for the count, so the cost follows the
    number of subscriptions, never the number of rows waiting: a saturated subscription with a
    million due rows costs one skipped subscription. Meant for the reader connection, outside
    the write lock; the counts let the claim that follows read only the rows it takes.
    """
    if conn.dialect == "postgresql":
        # The same plan on PostgreSQL: an array instead of json_each, and the alias filtered
        # outside (PostgreSQL does not let WHERE name a select-list alias).
        rows = await conn.execute_fetchall(
            """
            SELECT id, due, due_now, fifo FROM (
                SELECT s.id, (
                    SELECT min(d.next_attempt_at) FROM deliveries d
                    WHERE d.subscription_id = s.id AND d.status = 'pending'
                ) AS due, (
                    SELECT count(*) FROM (
                        SELECT 1 FROM deliveries x
                        WHERE x.subscription_id = s.id AND x.status = 'pending'
                          AND x.next_attempt_at <= ?
                        LIMIT ?
                    ) AS c
                ) AS due_now, s.ordering = 'fifo' AS fifo
                FROM subscriptions s
                WHERE s.status = 'active' AND NOT (s.id = ANY(?::text[]))
            ) AS ready
            WHERE due IS NOT NULL
            ORDER BY due LIMIT ?
            """,
            (now, cap, sorted(skip), limit),
        )
        return [Ready(row[0], float(row[1]), int(row[2]), bool(row[3])) for row in rows]
    rows = await conn.execute_fetchall(
        """
        SELECT s.id, (
            SELECT min(d.next_attempt_at) FROM deliveries d
            WHERE d.subscription_id = s.id AND d.status = 'pending'
        ) AS due, (
            SELECT count(*) FROM (
                SELECT 1 FROM deliveries x
                WHERE x.subscription_id = s.id AND x.status = 'pending'
                  AND x.next_attempt_at <= ?
                LIMIT ?
            )
        ) AS due_now, s.ordering = 'fifo' AS fifo
        FROM subscriptions s
        WHERE s.status = 'active' AND s.id NOT IN (SELECT value FROM json_each(?))
          AND due IS NOT NULL
        ORDER BY due LIMIT ?
        """,
        (now, cap, json.dumps(sorted(skip)), limit),
    )
    return [Ready(row[0], float(row[1]), int(row[2]), bool(row[3])) for row in rows]


def rooms_for(
    ready: Sequence[Ready], busy: Mapping[str, int], *, per_subscription: int, limit: int
) -> dict[str, int]:
    """How many deliveries to claim of each subscription in ``ready`` (earliest due first):
    what is due now, keeping each under ``per_subscription`` claimed (one for a FIFO
    subscription: its next delivery waits for its head) counting ``busy``, ``limit`` in all.
    Sized by the counts, so the claim reads no row it does not take."""
    rooms: dict[str, int] = {}
    left = limit
    for sub in ready:
        if left <= 0:
            break
        cap = 1 if sub.fifo else per_subscription
        room = min(cap - busy.get(sub.subscription_id, 0), sub.due_now, left)
        if room > 0:
            rooms[sub.subscription_id] = room
            left -= room
    return rooms


async def claim_due(
    conn: Connection,
    *,
    now: float,
    lease_until: float,
    rooms: Mapping[str, int],
    owner: str | None = None,
    cluster_cap: int | None = None,
) -> list[Claimed]:
    """Lease up to ``rooms[subscription]`` due deliveries of each subscription, earliest due
    first, in the caller's write transaction; return them with everything needed to send them.

    Due means pending with ``next_attempt_at <= now``. The rows are read from each subscription's
    stretch of ``deliveries_pending`` and reading stops at its room, so a claim reads at most
    ``max(rooms) * len(rooms)`` rows whatever the backlog (the dispatcher keeps that near its
    claim limit; a store must keep this O(claim), never O(backlog), since it runs under the write
    lock; docs/performance.md §3). Rooms come from :func:`rooms_for`, which keeps a FIFO
    subscription to one delivery claimed at a time (its later deliveries wait as ``queued``, see
    :func:`promote_queued`). Deliveries of a subscription that is not active are not claimed.

    Each claim gets a fresh fencing token and ``owner`` (the claiming node) on its rows. On
    PostgreSQL several nodes claim from the same table: there each room is also cut so that a
    subscription's deliveries in flight across all nodes stay at ``cluster_cap`` at most,
    counted in SQL under a transaction-scoped advisory lock, so claimers never decide from stale
    counts (docs/scaling.md; unlocked claimers each counting in their own snapshot overshot a cap
    of 8 fourfold).
    """
    rooms = {sub: room for sub, room in rooms.items() if room > 0}
    if not rooms:
        return []
    token = secrets.randbits(62)
    if conn.dialect == "postgresql":
        rows = await _due_shared(conn, now=now, rooms=rooms, cluster_cap=cluster_cap)
    else:
        # ``json_each`` keeps the statement text (and SQLite's prepared statement) the same
        # whatever the subscriptions; LIMIT must be a constant, so it is the largest room,
        # trimmed below.
        rows = await conn.execute_fetchall(
            """
            SELECT d.id, d.event_id, d.subscription_id, d.attempts, d.manual, d.next_attempt_at,
                   e.payload, s.url, s.secret, s.previous_secret, s.previous_secret_until,
                   s.headers, s.template, s.content_type
            FROM json_each(?) AS w
            JOIN subscriptions s ON s.id = w.value AND s.status = 'active'
            JOIN deliveries d ON d.rowid IN (
                SELECT x.rowid FROM deliveries x
                WHERE x.subscription_id = w.value AND x.status = 'pending'
                  AND x.next_attempt_at <= ?
                ORDER BY x.next_attempt_at LIMIT ?
            )
            JOIN events e ON e.id = d.event_id
            """,
            (json.dumps(sorted(rooms)), now, max(rooms.values())),
        )
    taken: dict[str, int] = {}
    chosen: list[Row] = []
    for row in sorted(rows, key=lambda r: (r["next_attempt_at"], r["id"])):
        sub = row["subscription_id"]
        if taken.get(sub, 0) < rooms[sub]:
            taken[sub] = taken.get(sub, 0) + 1
            chosen.append(row)
    if not chosen:
        return []
    settings = (
        "status = 'inflight', lease_until = ?, attempts = attempts + 1, updated_at = ?, "
        "claim_token = ?, lease_owner = ?"
    )
    if conn.dialect == "postgresql":
        # The rows were locked pending when chosen (_due_shared): all of them are leased. By
        # id alone: with ``AND status = 'pending'`` the planner, its statistics from before a
        # burst of new deliveries, read all of ``deliveries_pending`` beside the primary key
        # (10,023 entries to lease 13; docs/performance.md §3).
        await conn.execute(
            f"UPDATE deliveries SET {settings} WHERE id = ANY(?::text[])",
            (lease_until, now, token, owner, [row["id"] for row in chosen]),
        )
    else:
        # One writer, and the rows were read pending in this write transaction: all of them
        # are leased. Without RETURNING the statement is one sqlite3_step instead of one per
        # row, each of which gives up the GIL and may wait for a busy event loop to hand it
        # back (docs/performance.md §4).
        ids = padded([row["id"] for row in chosen])
        await conn.execute(
            f"UPDATE deliveries SET {settings} WHERE id IN ({marks(ids)}) AND status = 'pending'",
            (lease_until, now, token, owner, *ids),
        )
    # Parsed once per subscription, not once per delivery.
    headers: dict[str, dict[str, str]] = {}
    signing: dict[str, tuple[str, ...]] = {}
    claimed = []
    for row in chosen:
        sub = row["subscription_id"]
        if sub not in headers:
            headers[sub] = json.loads(row["headers"])
            signing[sub] = _signing_secrets(row, now)
        claimed.append(
            Claimed(
                id=row["id"],
                event_id=row["event_id"],
                subscription_id=sub,
                attempt=row["attempts"] + 1,
                url=row["url"],
                secrets=signing[sub],
                headers=headers[sub],
                payload=bytes(row["payload"]),
                manual=bool(row["manual"]),
                token=token,
                template=row["template"],
                content_type=row["content_type"],
            )
        )
    return claimed


# Serialises claims across nodes (pg_advisory_xact_lock key; see claim_due).
CLAIM_LOCK = 0x7265_656C_0002


async def _due_shared(
    conn: Connection, *, now: float, rooms: Mapping[str, int], cluster_cap: int | None
) -> list[Row]:
    """PostgreSQL: each subscription's earliest due rows, at most its room and, with
    ``cluster_cap``, at most what keeps its deliveries in flight on every node under the cap.

    The lock is taken before the choosing statement starts, so (READ COMMITTED) its snapshot
    includes every claim committed before ours; rows leaving 'inflight' meanwhile only make the
    counts err high, never past the cap.

    The rows chosen are locked (a row another writer holds is left for the next claim), so
    they are still pending when :func:`claim_due` leases them. Ordered as ``deliveries_pending``
    is, so its LIMIT stops the index scan at the room: a tie-break by id too had PostgreSQL read
    every due row of the subscription and sort them (5,000 rows for a claim of 8;
    docs/performance.md §3). Ties are broken by id afterwards.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
    subs = sorted(rooms)
    cap = cluster_cap if cluster_cap is not None else max(rooms.values())
    return await conn.execute_fetchall(
        """
        SELECT d.id, d.event_id, d.subscription_id, d.attempts, d.manual, d.next_attempt_at,
               e.payload, s.url, s.secret, s.previous_secret, s.previous_secret_until,
               s.headers, s.template, s.content_type
        FROM unnest(?::text[], ?::int[]) AS w(sub, room)
        JOIN subscriptions s ON s.id = w.sub AND s.status = 'active'
        CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM deliveries b
            WHERE b.subscription_id = w.sub AND b.status = 'inflight'
        ) AS busy
        CROSS JOIN LATERAL (
            SELECT x.* FROM deliveries x
            WHERE x.subscription_id = w.sub AND x.status = 'pending' AND x.next_attempt_at <= ?
            ORDER BY x.next_attempt_at
            LIMIT GREATEST(0, LEAST(w.room, ? - busy.n))
            FOR UPDATE SKIP LOCKED
        ) AS d
        JOIN events e ON e.id = d.event_id
        """,
        (subs, [rooms[sub] for sub in subs], now, cap),
    )


NewRow = tuple[str, str, float, float]
"""A delivery to write: (event id, subscription id, first attempt due at, event created at)."""


async def insert_new(
    conn: Connection,
    rows: Sequence[NewRow],
    fifo: Collection[str],
    quiet: Collection[str] = (),
) -> int:
    """Write one pending delivery per row, in the caller's transaction; return how many.

    The statements ingest writes its delivery rows with, and the deferred fan-out's expansion
    too (service/storage/fanouts.py). Rows to a subscription in ``fifo`` whose subscription
    still delivers in order and has a delivery open wait behind it as 'queued', in event order
    (:func:`promote_queued`); rows are inserted in order, so each sees the ones before it.

    The rows are announced as due work (``Work.DELIVERIES``) unless every one goes to a
    subscription in ``quiet``: those the caller knows will be claimed without a wake-up (on
    SQLite, one node, subscriptions whose dispatcher holds all it claims ahead of them and
    claims again as they finish; see ``Dispatcher.hot_claims``). Waking it for them cost a read
    of what is due per ingest commit that found nothing it could claim (docs/performance.md §3).
    """
    if not rows:
        return 0
    # Only a FIFO subscription's delivery may have to wait behind an open one; every other row
    # is a plain insert (the per-row check below cost about as much as the row itself; on
    # SQLite ~9 µs of ~20, docs/performance.md §4).
    ids = iter(new_ids("dlv", len(rows)))
    plain: list[tuple[str, str, str, float, float, float]] = []
    queued: list[tuple[str, str, str, float, str, float, float, str, str]] = []
    for event_id, sub, due, created in rows:
        id_ = next(ids)
        if sub in fifo:
            # Positional (both engines number ``?``): id, event, sub, due, event, at, at, sub, sub.
            queued.append((id_, event_id, sub, due, event_id, created, created, sub, sub))
        else:
            plain.append((id_, event_id, sub, due, created, created))
    if plain and conn.dialect == "postgresql":
        # One statement, the rows as arrays: a statement per row cost ~23 µs of PostgreSQL's
        # executor each (docs/performance.md §3). The columns id, event, subscription, due and
        # created (the row's last column repeats it).
        columns = [list(column) for column in zip(*plain, strict=True)]
        await conn.execute(
            "INSERT INTO deliveries (id, event_id, subscription_id, status, next_attempt_at, "
            "created_at, updated_at) SELECT u.id, u.event_id, u.sub, 'pending', u.due, u.at, u.at "
            "FROM unnest(?::text[], ?::text[], ?::text[], ?::float8[], ?::float8[]) "
            "AS u(id, event_id, sub, due, at)",
            columns[:5],
        )
    elif plain:
        await conn.executemany(
            "INSERT INTO deliveries (id, event_id, subscription_id, status, next_attempt_at, "
            "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            plain,
        )
    if queued:
        await conn.executemany(
            "INSERT INTO deliveries (id, event_id, subscription_id, status, next_attempt_at, "
            "queue_seq, created_at, updated_at) "
            "SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), "
            "CASE WHEN q THEN 'queued' ELSE 'pending' END, "
            "CASE WHEN q THEN NULL ELSE CAST(? AS DOUBLE PRECISION) END, "
            "CASE WHEN q THEN (SELECT seq FROM events WHERE id = ?) END, "
            "CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION) "
            f"FROM (SELECT {_QUEUES} AS q) AS queues",
            queued,
        )
    if not quiet or any(sub not in quiet for _, sub, _, _ in rows):
        announce(conn, Work.DELIVERIES)
    return len(rows)


@dataclass(frozen=True, slots=True)
class HotLease:
    """The claim under which ingest writes a fresh event's deliveries already claimed by this
    node (docs/architecture.md, "A delivery"): the same columns a claim (:func:`claim_due`) sets,
    so such a row is in every way a claimed one, and a node that dies leaves it to be handed
    back as any claimed row is (:func:`release`, :func:`release_orphaned`)."""

    token: int
    owner: str | None
    lease_until: float
    cluster_cap: int
    """PostgreSQL: the most deliveries of one subscription in flight on all nodes together."""


async def insert_claimed(
    conn: Connection, rows: Sequence[NewRow], lease: HotLease, now: float
) -> list[tuple[str, str, str]]:
    """Write one delivery per row already claimed under ``lease`` (in flight, one attempt
    counted), in the caller's write transaction; return (delivery id, event id, subscription
    id) of the rows written claimed, in the order given.

    The caller reserved room for each in this node's lanes (service/delivery/dispatcher.py), so
    on SQLite, one node, every row is written claimed. On PostgreSQL other nodes claim from the
    same table: the cap on a subscription's deliveries in flight across nodes is counted as
    :func:`claim_due` counts it, under the same advisory lock (``CLAIM_LOCK``, taken by
    :func:`take_claim_lock` before the event log's lock), and a row that would pass it is written
    pending instead (announced as due work; the caller releases its reservation).
    """
    if not rows:
        return []
    ids = new_ids("dlv", len(rows))
    if conn.dialect != "postgresql":
        await conn.executemany(
            "INSERT INTO deliveries (id, event_id, subscription_id, status, next_attempt_at, "
            "attempts, lease_until, claim_token, lease_owner, created_at, updated_at) "
            "VALUES (?, ?, ?, 'inflight', ?, 1, ?, ?, ?, ?, ?)",
            [
                (id_, event_id, sub, due, lease.lease_until, lease.token, lease.owner, created, now)
                for id_, (event_id, sub, due, created) in zip(ids, rows, strict=True)
            ],
        )
        return [(id_, row[0], row[1]) for id_, row in zip(ids, rows, strict=True)]
    # Each row's rank among this batch's rows of its subscription: the statement does not see
    # its own inserts, so the count of rows in flight is the same for all of them.
    seen: dict[str, int] = {}
    ranks = []
    for _, sub, _, _ in rows:
        seen[sub] = seen.get(sub, 0) + 1
        ranks.append(seen[sub])
    # Only the rows written pending come back (normally none): no row per delivery to decode.
    pending = await conn.execute_fetchall(
        """
        WITH written AS (
            INSERT INTO deliveries (id, event_id, subscription_id, status, next_attempt_at,
                                    attempts, lease_until, claim_token, lease_owner, created_at,
                                    updated_at)
            SELECT w.id, w.event_id, w.sub, CASE WHEN h.hot THEN 'inflight' ELSE 'pending' END,
                   w.due, CASE WHEN h.hot THEN 1 ELSE 0 END,
                   CASE WHEN h.hot THEN CAST(? AS DOUBLE PRECISION) END,
                   CASE WHEN h.hot THEN CAST(? AS BIGINT) END,
                   CASE WHEN h.hot THEN CAST(? AS TEXT) END, w.created, CAST(? AS DOUBLE PRECISION)
            FROM unnest(?::text[], ?::text[], ?::text[], ?::float8[], ?::float8[], ?::int[])
                 AS w(id, event_id, sub, due, created, rank)
            CROSS JOIN LATERAL (
                SELECT (SELECT count(*) FROM deliveries b
                        WHERE b.subscription_id = w.sub AND b.status = 'inflight') + w.rank
                       <= CAST(? AS INTEGER) AS hot
            ) AS h
            RETURNING id, status
        )
        SELECT id FROM written WHERE status = 'pending'
        """,
        (
            lease.lease_until,
            lease.token,
            lease.owner,
            now,
            ids,
            [row[0] for row in rows],
            [row[1] for row in rows],
            [row[2] for row in rows],
            [row[3] for row in rows],
            ranks,
            lease.cluster_cap,
        ),
    )
    if not pending:
        return [(id_, row[0], row[1]) for id_, row in zip(ids, rows, strict=True)]
    announce(conn, Work.DELIVERIES)  # those written pending are due work for any node
    cut = {row["id"] for row in pending}
    return [(id_, row[0], row[1]) for id_, row in zip(ids, rows, strict=True) if id_ not in cut]


async def take_claim_lock(conn: Connection) -> None:
    """PostgreSQL: the lock :func:`claim_due` counts deliveries in flight under, for a write
    transaction about to write claimed rows (:func:`insert_claimed`); held to its commit.
    Taken before the event log's lock (``events.APPEND_LOCK``): a transaction holding both always
    took them in that order, so two never wait on each other. SQLite: nothing to do."""
    if conn.dialect == "postgresql":
        await conn.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))


_QUEUES = (
    "(SELECT ordering FROM subscriptions WHERE id = CAST(? AS TEXT)) = 'fifo' AND EXISTS (SELECT 1 "
    "FROM deliveries WHERE subscription_id = CAST(? AS TEXT) "
    "AND status IN ('pending', 'inflight', 'queued'))"
)


async def fifo_among(conn: Connection, sub_ids: set[str]) -> set[str]:
    """Those of ``sub_ids`` that deliver in order."""
    if not sub_ids:
        return set()
    # Padded (database.padded): outcome batches name any number of subscriptions.
    ids = padded(sorted(sub_ids))
    rows = await conn.execute_fetchall(
        f"SELECT id FROM subscriptions WHERE id IN ({marks(ids)}) AND ordering = 'fifo'",
        ids,
    )
    return {row["id"] for row in rows}


async def promote_queued(conn: Connection, sub_ids: Sequence[str], now: float) -> int:
    """For each FIFO subscription in ``sub_ids`` with nothing pending or in flight, make its
    first queued delivery (in event order) due at ``now``; return how many were promoted.

    Called in the transaction that finishes a head delivery (succeeded, failed for good), so the
    queue moves on exactly when its head is done, and a crash in between changes nothing.
    """
    promoted = 0
    for sub_id in sub_ids:
        cursor = await conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, queue_seq = NULL, "
            "updated_at = ? WHERE id = (SELECT id FROM deliveries WHERE subscription_id = ? "
            "AND status = 'queued' ORDER BY queue_seq LIMIT 1) AND NOT EXISTS (SELECT 1 FROM "
            "deliveries WHERE subscription_id = ? AND status IN ('pending', 'inflight'))",
            (now, now, sub_id, sub_id),
        )
        promoted += cursor.rowcount
    if promoted:
        announce(conn, Work.DELIVERIES)
    return promoted


async def restart_queues(conn: Connection, now: float) -> int:
    """At start-up: promote the head of every queue that has none (a subscription switched back
    to FIFO, or a queue whose head was canceled by hand in the database); return how many."""
    rows = await conn.execute_fetchall(
        "SELECT DISTINCT subscription_id FROM deliveries WHERE status = 'queued'"
    )
    return await promote_queued(conn, [row[0] for row in rows], now)


async def release_queue(conn: Connection, sub_id: str, now: float) -> int:
    """Make every queued delivery of ``sub_id`` due at ``now`` (it no longer delivers in order)."""
    queued = "subscription_id = ? AND status = 'queued'"
    await lock_in_id_order(conn, queued, (sub_id,))
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, queue_seq = NULL, "
        f"updated_at = ? WHERE {queued}",
        (now, now, sub_id),
    )
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount


@dataclass(frozen=True, slots=True)
class Queue:
    """A FIFO subscription's line: the delivery at its head (pending or in flight), if any, and
    how many wait behind it."""

    head: Delivery | None
    queued: int


async def queue_of(conn: Connection, sub_id: str) -> Queue:
    rows = await conn.execute_fetchall(
        f"{_DELIVERY_SELECT} WHERE d.subscription_id = ? AND d.status IN ('pending', 'inflight') "
        "ORDER BY d.next_attempt_at LIMIT 1",
        (sub_id,),
    )
    head = _delivery(next(iter(rows))) if rows else None
    counted = await conn.execute_fetchall(
        "SELECT count(*) FROM deliveries WHERE subscription_id = ? AND status = 'queued'",
        (sub_id,),
    )
    return Queue(head, int(next(iter(counted))[0]))


def _signing_secrets(sub: Row, now: float) -> tuple[str, ...]:
    """The current secret, and the one it replaced while its rotation grace period lasts."""
    previous, until = sub["previous_secret"], sub["previous_secret_until"]
    if previous and until is not None and until > now:
        return (sub["secret"], previous)
    return (sub["secret"],)


async def record(conn: Connection, outcomes: Sequence[AttemptOutcome]) -> list[AttemptOutcome]:
    """Store each attempt and move each delivery to its next state, in the caller's transaction;
    return the outcomes recorded.

    An outcome whose claim is no longer current (the delivery was handed back and claimed again
    under another token, or finished) is refused: a node that lost its lease, say one paused
    past its heartbeat, must not overwrite what the node that took over does. The rows are
    locked first (in id order, so two recorders cannot deadlock) so no claim slips in between.
    """
    if not outcomes:
        return []
    # Padded: one statement text per power of two, not per batch size (database.padded).
    ids = padded(sorted({o.delivery_id for o in outcomes}))
    lock = " FOR UPDATE" if conn.dialect == "postgresql" else ""
    # By id alone, the status checked here: with ``AND status = 'inflight'`` PostgreSQL's
    # planner may read every row in flight on every node beside the primary key (see
    # claim_due's lease).
    current = {
        row["id"]: row["claim_token"]
        for row in await conn.execute_fetchall(
            f"SELECT id, claim_token, status FROM deliveries WHERE id IN ({marks(ids)}) "
            f"ORDER BY id{lock}",
            ids,
        )
        if row["status"] == DeliveryStatus.INFLIGHT
    }
    # A row handed back has no token (NULL), so it matches no outcome.
    accepted = [o for o in outcomes if current.get(o.delivery_id) == o.token]
    if accepted:
        await _store_outcomes(conn, accepted)
    return accepted


async def lock_in_id_order(conn: Connection, where: str, params: Sequence[Any]) -> None:
    """PostgreSQL: lock the deliveries ``where`` selects, in id order, in the caller's write
    transaction, before a statement that writes several of them at once.

    An UPDATE or DELETE locks rows in the order its plan reads them; :func:`record` locks in id
    order. Two such writers on two nodes, each holding a row the other wants next, deadlock and
    PostgreSQL aborts one (a subscription's deletion answered 500). Taking every multi-row lock in
    one order rules that out (docs/scaling.md). SQLite has one writer: nothing to do.
    """
    if conn.dialect == "postgresql":
        await conn.execute_fetchall(
            f"SELECT id FROM deliveries WHERE {where} ORDER BY id FOR UPDATE", params
        )


async def _store_outcomes(conn: Connection, outcomes: Sequence[AttemptOutcome]) -> None:
    if conn.dialect == "postgresql":
        await _store_outcomes_as_arrays(conn, outcomes)
    else:
        await _store_outcomes_by_row(conn, outcomes)
    # A FIFO subscription's head that is done lets the next queued delivery go.
    finished = {o.subscription_id for o in outcomes if o.status != "pending"}
    if finished:
        now = max(o.attempted_at for o in outcomes)
        await promote_queued(conn, sorted(await fifo_among(conn, finished)), now)
    # Retries were scheduled: they are due work. Plain successes and final failures create none
    # and announce nothing, so recording them does not wake every dispatcher for a read of what
    # is due (a FIFO subscription's next delivery announces itself in promote_queued; the
    # dispatcher claims again on its own as its deliveries finish). At one subscriber that read
    # followed every batch of outcomes (docs/performance.md §4).
    if any(o.status == DeliveryStatus.PENDING for o in outcomes):
        announce(conn, Work.DELIVERIES)


async def _store_outcomes_as_arrays(conn: Connection, outcomes: Sequence[AttemptOutcome]) -> None:
    """PostgreSQL: the batch's attempts and deliveries as one statement each, the rows passed as
    arrays; a statement per row cost 13-23 µs of the executor each (docs/performance.md §3).
    The deliveries were locked in :func:`record` and are still in flight under these claims, so
    they are updated by id alone, through the primary key (see :func:`claim_due`'s lease)."""
    await conn.execute(
        "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error, "
        "response_body) SELECT * FROM unnest(?::text[], ?::float8[], ?::int[], ?::float8[], "
        "?::text[], ?::bytea[])",
        _fields(
            outcomes,
            "delivery_id",
            "attempted_at",
            "status_code",
            "latency_ms",
            "error",
            "response_body",
        ),
    )
    await conn.execute(
        "UPDATE deliveries AS d SET status = u.status, next_attempt_at = u.next_attempt_at, "
        "lease_until = NULL, manual = 0, last_status_code = u.status_code, last_error = u.error, "
        "updated_at = u.attempted_at, claim_token = NULL, lease_owner = NULL "
        "FROM unnest(?::text[], ?::text[], ?::float8[], ?::int[], ?::text[], ?::float8[]) "
        "AS u(id, status, next_attempt_at, status_code, error, attempted_at) WHERE d.id = u.id",
        _fields(
            outcomes,
            "delivery_id",
            "status",
            "next_attempt_at",
            "status_code",
            "error",
            "attempted_at",
        ),
    )


def _fields(outcomes: Sequence[AttemptOutcome], *names: str) -> list[list[Any]]:
    """Each named field of ``outcomes`` as a list, in the outcomes' order: a statement's arrays."""
    return [[getattr(o, name) for o in outcomes] for name in names]


async def _store_outcomes_by_row(conn: Connection, outcomes: Sequence[AttemptOutcome]) -> None:
    """SQLite: a statement per row (``UPDATE … FROM (VALUES …)`` measured about twice the CPU
    of ``executemany`` there, docs/performance-journal.md)."""
    await conn.executemany(
        "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error, "
        "response_body) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (o.delivery_id, o.attempted_at, o.status_code, o.latency_ms, o.error, o.response_body)
            for o in outcomes
        ],
    )
    await conn.executemany(
        "UPDATE deliveries SET status = ?, next_attempt_at = ?, lease_until = NULL, manual = 0, "
        "last_status_code = ?, last_error = ?, updated_at = ?, claim_token = NULL, "
        "lease_owner = NULL WHERE id = ? AND status = 'inflight'",
        [
            (o.status, o.next_attempt_at, o.status_code, o.error, o.attempted_at, o.delivery_id)
            for o in outcomes
        ],
    )


async def release(
    conn: Connection,
    delivery_ids: Sequence[str] | None,
    now: float,
    *,
    owner: str | None = None,
) -> int:
    """Hand leased deliveries back as due at ``now``, as if never claimed; return how many.

    ``delivery_ids`` None releases every lease: on SQLite at start-up a lease can only be a
    previous run's, since one process owns the file (PostgreSQL nodes use
    :func:`release_orphaned` instead). With ``owner``, only rows that node still holds are
    released, so a node handing back its unfinished work never touches a row taken over by
    another. The unfinished attempt is not counted, so it does not use up a place in the retry
    schedule.
    """
    where = "status = 'inflight'"
    params: list[Any] = []
    if delivery_ids is not None:
        if not delivery_ids:
            return 0
        where += f" AND id IN ({marks(delivery_ids)})"
        params.extend(delivery_ids)
    if owner is not None:
        where += " AND lease_owner = ?"
        params.append(owner)
    await lock_in_id_order(conn, where, params)
    cursor = await conn.execute(f"{_RELEASE} WHERE {where}", [now, now, *params])
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount


_RELEASE = (
    "UPDATE deliveries SET status = 'pending', lease_until = NULL, next_attempt_at = ?, "
    "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = ?, "
    "claim_token = NULL, lease_owner = NULL"
)


async def still_claimed(conn: Connection, delivery_id: str, token: int) -> bool:
    """Whether the claim with fencing ``token`` on the delivery is still the current one (no
    other node took the delivery over since): asked by a node unsure of its leases."""
    rows = await conn.execute_fetchall(
        "SELECT 1 FROM deliveries WHERE id = ? AND claim_token = ? AND status = 'inflight'",
        (delivery_id, token),
    )
    return bool(rows)


async def release_orphaned(conn: Connection, now: float, *, node_timeout: float) -> int:
    """PostgreSQL: hand back every lease whose node is dead (no heartbeat within
    ``node_timeout`` seconds of the database's clock) or unknown; return how many.

    What a live node holds is never touched, whatever its lease time says: start-up and the
    stale-node sweep both use this, so a starting node cannot steal a running node's work.
    """
    orphaned = (
        "status = 'inflight' AND (lease_owner IS NULL OR lease_owner NOT IN "
        "(SELECT id FROM nodes WHERE heartbeat_at >= extract(epoch from clock_timestamp()) - ?))"
    )
    await lock_in_id_order(conn, orphaned, (node_timeout,))
    cursor = await conn.execute(f"{_RELEASE} WHERE {orphaned}", (now, now, node_timeout))
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount


# --- the delivery log ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (event, subscription) pair as the delivery log shows it."""

    id: str
    event_id: str
    event_type: str
    job_id: str | None
    subscription_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    attempted_at: float
    status_code: int | None
    latency_ms: float
    error: str | None
    response_body: bytes | None


_DELIVERY_SELECT = (
    "SELECT d.id, d.event_id, e.type AS event_type, e.job_id, d.subscription_id, d.status, "
    "d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, d.updated_at "
    "FROM deliveries d JOIN events e ON e.id = d.event_id"
)


def _delivery(row: Row) -> Delivery:
    fields = {name: row[name] for name in Delivery.__dataclass_fields__}
    return Delivery(**{**fields, "status": DeliveryStatus(row["status"])})


def _owned_by(owner_key_id: str) -> tuple[str, list[Any]]:
    return "d.subscription_id IN (SELECT id FROM subscriptions WHERE owner_key_id = ?)", [
        owner_key_id
    ]


async def list_page(
    conn: Connection,
    *,
    owner_key_id: str | None,
    subscription_id: str | None = None,
    status: str | None = None,
    event_id: str | None = None,
    job_id: str | None = None,
    event_type: str | None = None,
    created_since: float | None = None,
    created_until: float | None = None,
    before_id: str | None = None,
    limit: int,
) -> list[Delivery]:
    """Deliveries newest first, filtered; ``owner_key_id`` limits them to that key's
    subscriptions (None: everyone's); ``created_since`` inclusive, ``created_until`` not.

    One subscription's deliveries of every status are read as one newest-first page per status
    from ``deliveries_subscription`` (subscription_id, status, id), merged: that index orders a
    subscription's rows by status first, and one ORDER BY over all of them sorted the whole
    history of the subscription for each page (a million rows for a slow subscriber's backlog;
    docs/performance-journal.md, "A subscription's deliveries a page at a time")."""
    clauses: list[str] = []
    params: list[Any] = []
    if owner_key_id is not None:
        clause, values = _owned_by(owner_key_id)
        clauses.append(clause)
        params.extend(values)
    for column, value in (
        ("d.subscription_id", subscription_id),
        ("d.status", status),
        ("d.event_id", event_id),
        ("e.job_id", job_id),
        ("e.type", event_type),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if created_since is not None:
        clauses.append("d.created_at >= ?")
        params.append(created_since)
    if created_until is not None:
        clauses.append("d.created_at < ?")
        params.append(created_until)
    if before_id is not None:
        clauses.append("d.id < ?")
        params.append(before_id)
    if subscription_id is not None and status is None and event_id is None:
        # Each branch is a page of one status in id order, read from the index and no further;
        # the status is a literal in each, and ORDER BY with LIMIT inside a compound query must
        # sit in a subquery on both engines.
        where = " AND ".join(clauses)
        branches = " UNION ALL ".join(
            f"SELECT id FROM (SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id "
            f"WHERE {where} AND d.status = '{each.value}' ORDER BY d.id DESC LIMIT ?) AS b{n}"
            for n, each in enumerate(DeliveryStatus)
        )
        sql = f"{_DELIVERY_SELECT} WHERE d.id IN ({branches}) ORDER BY d.id DESC LIMIT ?"
        params = [*[*params, limit] * len(DeliveryStatus), limit]
    else:
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"{_DELIVERY_SELECT} {where} ORDER BY d.id DESC LIMIT ?"
        params.append(limit)
    async with conn.execute(sql, params) as c:
        return [_delivery(row) for row in await c.fetchall()]


async def get(conn: Connection, delivery_id: str, *, owner_key_id: str | None) -> Delivery | None:
    """One delivery, if it exists and (with ``owner_key_id``) belongs to that key."""
    clauses, params = ["d.id = ?"], [delivery_id]
    if owner_key_id is not None:
        clause, values = _owned_by(owner_key_id)
        clauses.append(clause)
        params.extend(values)
    async with conn.execute(f"{_DELIVERY_SELECT} WHERE {' AND '.join(clauses)}", params) as c:
        row = await c.fetchone()
    return _delivery(row) if row else None


async def attempts_of(conn: Connection, delivery_id: str) -> list[Attempt]:
    """Every attempt of a delivery, oldest first."""
    async with conn.execute(
        "SELECT attempted_at, status_code, latency_ms, error, response_body FROM attempts "
        "WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    ) as cursor:
        return [Attempt(*row) for row in await cursor.fetchall()]


async def payload_of(conn: Connection, event_id: str) -> bytes | None:
    async with conn.execute("SELECT payload FROM events WHERE id = ?", (event_id,)) as cursor:
        row = await cursor.fetchone()
    return bytes(row["payload"]) if row else None


async def resend(conn: Connection, delivery_id: str, now: float) -> bool:
    """Make a delivery due at ``now``; False if it is in flight or canceled (nothing changes).

    A pending delivery keeps its schedule, only brought forward; a finished one (succeeded or
    failed) gets one attempt marked manual, which is not rescheduled if it fails.
    """
    cursor = await conn.execute(
        "UPDATE deliveries SET manual = CASE WHEN status = 'pending' THEN manual ELSE 1 END, "
        "status = 'pending', next_attempt_at = ?, updated_at = ? "
        "WHERE id = ? AND status IN ('pending', 'succeeded', 'failed')",
        (now, now, delivery_id),
    )
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount > 0


async def recover(
    conn: Connection,
    subscription_id: str,
    *,
    since: float,
    until: float | None,
    now: float,
) -> int:
    """Resend every failed delivery of a subscription created in [since, until); return how many.

    Each gets one manual attempt at ``now``, as with :func:`resend`.
    """
    failed = (
        "subscription_id = ? AND status = 'failed' AND created_at >= ? "
        "AND (CAST(? AS DOUBLE PRECISION) IS NULL OR created_at < ?)"
    )
    await lock_in_id_order(conn, failed, (subscription_id, since, until, until))
    cursor = await conn.execute(
        f"UPDATE deliveries SET status = 'pending', manual = 1, next_attempt_at = ?, "
        f"updated_at = ? WHERE {failed}",
        (now, now, subscription_id, since, until, until),
    )
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount
