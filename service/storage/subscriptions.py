"""SQL for subscriptions."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.core.clock import isoformat
from service.core.jsonutil import dumps
from service.core.models import Subscription, SubscriptionStatus
from service.storage import deliveries
from service.storage.announcements import Work, announce
from service.storage.database import Connection, Row, Statement, marks, padded

_COLUMNS = (
    "id, owner_key_id, url, secret, event_types, models, headers, description, status, job_id, "
    "created_at, updated_at, filter, template, content_type, ordering"
)
# Columns the delivery engine maintains: read with every subscription, written only by the
# functions below, so a PATCH holding an older copy never undoes a rotation or a disable.
_SELECT = f"{_COLUMNS}, previous_secret, previous_secret_until, failing_since, disabled_reason"


def _from_row(row: Row, texts: dict[str, Any] | None = None) -> Subscription:
    """A subscription from its row. ``texts``: JSON already decoded, by its text, to share
    across the rows of one read (most subscriptions' type, model and header lists are the same
    few texts, and decoding them took ~10 ms of the 1,000 rows read per ingest batch)."""
    return Subscription(
        id=row["id"],
        owner_key_id=row["owner_key_id"],
        url=row["url"],
        secret=row["secret"],
        event_types=_decoded(row["event_types"], texts),
        models=_decoded(row["models"], texts),
        # A copy each: a dict is mutable, the tuples above are not.
        headers=dict(_decoded(row["headers"], texts)),
        description=row["description"],
        status=SubscriptionStatus(row["status"]),
        job_id=row["job_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        previous_secret=row["previous_secret"],
        previous_secret_until=row["previous_secret_until"],
        failing_since=row["failing_since"],
        disabled_reason=row["disabled_reason"],
        filter=json.loads(row["filter"]) if row["filter"] is not None else None,
        template=row["template"],
        content_type=row["content_type"],
        ordering=row["ordering"],
    )


def _decoded(text: str, texts: dict[str, Any] | None) -> Any:
    """``text`` decoded (a JSON list as a tuple), once per ``texts``."""
    if texts is not None and text in texts:
        return texts[text]
    value = json.loads(text)
    if isinstance(value, list):
        value = tuple(value)
    if texts is not None:
        texts[text] = value
    return value


async def insert(conn: Connection, sub: Subscription) -> None:
    await conn.execute(
        f"INSERT INTO subscriptions ({_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            sub.id,
            sub.owner_key_id,
            sub.url,
            sub.secret,
            dumps(list(sub.event_types)),
            dumps(list(sub.models)),
            dumps(sub.headers),
            sub.description,
            sub.status,
            sub.job_id,
            sub.created_at,
            sub.updated_at,
            dumps(sub.filter) if sub.filter is not None else None,
            sub.template,
            sub.content_type,
            sub.ordering,
        ),
    )


async def save(conn: Connection, sub: Subscription) -> None:
    """Store the fields a client edits. The secret and the status change only through
    :func:`rotate_secret`, :func:`set_status` and :func:`disable_failing`."""
    await conn.execute(
        "UPDATE subscriptions SET url = ?, event_types = ?, models = ?, headers = ?, "
        "description = ?, filter = ?, template = ?, content_type = ?, ordering = ?, "
        "updated_at = ? WHERE id = ?",
        (
            sub.url,
            dumps(list(sub.event_types)),
            dumps(list(sub.models)),
            dumps(sub.headers),
            sub.description,
            dumps(sub.filter) if sub.filter is not None else None,
            sub.template,
            sub.content_type,
            sub.ordering,
            sub.updated_at,
            sub.id,
        ),
    )


async def get(conn: Connection, sub_id: str) -> Subscription | None:
    async with conn.execute(
        f"SELECT {_SELECT} FROM subscriptions WHERE id = ?{conn.for_update}", (sub_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def delete(conn: Connection, sub_id: str) -> bool:
    """Delete it and cancel its open deliveries (kept for audit); True if it existed.

    The cancelling comes after the row's deletion: on PostgreSQL a fan-out expansion that read
    the subscription holds it ``FOR KEY SHARE`` until it commits (service/storage/fanouts.py),
    so the DELETE waits for it, and the UPDATE after it (a statement of its own, which sees what
    committed meanwhile) cancels what the expansion wrote too."""
    open_ones = "subscription_id = ? AND status IN ('pending', 'inflight', 'queued')"
    await deliveries.lock_in_id_order(conn, open_ones, (sub_id,))
    cursor = await conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
    await conn.execute(
        f"UPDATE deliveries SET status = 'canceled', lease_until = NULL WHERE {open_ones}",
        (sub_id,),
    )
    return cursor.rowcount > 0


async def count_standing(conn: Connection, owner_key_id: str) -> int:
    """How many standing subscriptions (not a job's one-off callback) ``owner_key_id`` owns."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT count(*) FROM subscriptions WHERE owner_key_id = ? AND job_id IS NULL",
            (owner_key_id,),
        )
    )
    return int(rows[0][0])


async def list_page(
    conn: Connection, *, owner_key_id: str | None, after_id: str | None, limit: int
) -> list[Subscription]:
    clauses = ["job_id IS NULL"]
    params: list[object] = []
    if owner_key_id is not None:
        clauses.append("owner_key_id = ?")
        params.append(owner_key_id)
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    params.append(limit)
    sql = f"SELECT {_SELECT} FROM subscriptions WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
    async with conn.execute(sql, params) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


Audience = tuple[str | None, str | None]
"""Whom an event is about: (owner key id, job id); (None, None) for an event of no job."""


@dataclass(frozen=True, slots=True)
class Heard:
    """Who may hear of one audience's event: ``standing`` subscriptions (the same list object
    for every audience of one owner in a :func:`listeners` call, so a caller matching an event
    against it can reuse the result for the next event of the same kind) and the job's own
    one-off ``callback_url`` subscriptions."""

    standing: list[Subscription]
    own: list[Subscription]

    def __iter__(self) -> Iterator[Subscription]:
        yield from self.standing
        yield from self.own


_PARSED_MOST = 16_384
"""How many parsed subscriptions a :func:`listeners` cache keeps before it starts afresh."""


async def listeners(
    conn: Connection,
    audiences: Sequence[Audience],
    parsed: dict[tuple[Any, ...], Subscription] | None = None,
) -> list[Heard]:
    """For each audience, the active subscriptions that may hear of it, in one query.

    A subscription hears of its own key's jobs, an admin key's subscriptions of every job, and a
    one-off ``callback_url`` subscription of its own job only; an event of no job reaches every
    subscription that is not one-off. Type and model filters are left to
    :meth:`Subscription.matches`.

    ``parsed``: the caller's cache of subscriptions by their row's every value, kept across
    calls. Building a subscription from its row took ~6 µs, 6 ms for the 1,000 subscriptions an
    ingest batch reads (docs/performance.md §4); a row read again unchanged is not built again.
    The subscriptions returned are shared with later calls, to be read only.
    """
    job_ids = sorted({job for _, job in audiences if job is not None})
    owners = sorted({owner for owner, _ in audiences if owner is not None})
    clauses = ["status = 'active'", f"(job_id IS NULL OR job_id IN ({marks(job_ids)}))"]
    params: list[str] = [*job_ids]
    if all(owner is not None for owner, _ in audiences):
        clauses.append(f"(owner_key_id IN ({marks(owners)}) OR {_ADMIN_OWNER})")
        params.extend(owners)
    sql = (
        f"SELECT {_SELECT}, {_ADMIN_OWNER} AS admin_owner FROM subscriptions"
        f" WHERE {' AND '.join(clauses)} ORDER BY id"
    )
    return heard_by(await conn.execute_fetchall(sql, params), audiences, parsed)


def listening_to_jobs(job_ids: Sequence[str]) -> Statement:
    """A statement reading every subscription that may hear of the jobs ``job_ids`` (at least
    one), their owners found by the statement itself: what :func:`listeners` reads for these
    jobs' events, or more. It can therefore run before the batch knows which jobs announce
    anything, in the same trip as the jobs' own read (:meth:`Connection.run_all`); pass its
    rows to :func:`heard_by`, which picks each audience's as :func:`listeners` does."""
    # Padded to a power of two: a few SQL texts, all kept prepared (database.padded).
    wanted = padded(job_ids)
    listed = marks(wanted)
    sql = (
        f"SELECT {_SELECT}, {_ADMIN_OWNER} AS admin_owner FROM subscriptions"
        f" WHERE status = 'active' AND (job_id IS NULL OR job_id IN ({listed}))"
        f" AND (owner_key_id IN (SELECT owner_key_id FROM jobs WHERE id IN ({listed}))"
        f" OR {_ADMIN_OWNER}) ORDER BY id"
    )
    return sql, [*wanted, *wanted]


def heard_by(
    found: Sequence[Row],
    audiences: Sequence[Audience],
    parsed: dict[tuple[Any, ...], Subscription] | None = None,
) -> list[Heard]:
    """:func:`listeners`' answer from rows read by it or by :func:`listening_to_jobs` (for jobs
    that include every audience's): each audience's subscriptions among them."""
    texts: dict[str, Any] = {}
    if parsed is None:
        rows = [(_from_row(row, texts), bool(row["admin_owner"])) for row in found]
    else:
        if len(parsed) > _PARSED_MOST:
            parsed.clear()
        rows = []
        for row in found:
            key = tuple(row)
            sub = parsed.get(key)
            if sub is None:
                sub = parsed[key] = _from_row(row, texts)
            rows.append((sub, bool(row["admin_owner"])))
    # Filtered once per owner, not once per audience: with 1,000 subscriptions and a batch of
    # 50 callbacks, per audience it was 50,000 checks (docs/performance.md §4).
    standing: dict[str | None, list[Subscription]] = {}
    one_off: dict[str, list[tuple[Subscription, bool]]] = {}
    for sub, admin_owner in rows:
        if sub.job_id is not None:
            one_off.setdefault(sub.job_id, []).append((sub, admin_owner))
    heard = []
    for owner, job_id in audiences:
        if owner not in standing:
            standing[owner] = [
                sub
                for sub, admin_owner in rows
                if sub.job_id is None
                and (owner is None or admin_owner or sub.owner_key_id == owner)
            ]
        own = [
            sub
            for sub, admin_owner in one_off.get(job_id or "", ())
            if owner is None or admin_owner or sub.owner_key_id == owner
        ]
        heard.append(Heard(standing[owner], own))
    return heard


_ADMIN_OWNER = "owner_key_id IN (SELECT id FROM api_keys WHERE scopes LIKE '%\"admin\"%')"


async def rotate_secret(
    conn: Connection, sub_id: str, new_secret: str, *, previous_until: float, now: float
) -> None:
    """Make ``new_secret`` current; the secret it replaces keeps signing until ``previous_until``.

    Only the secret being replaced is kept: one from an earlier rotation stops signing now.
    """
    # On the right-hand side SQLite reads the row's old values, so the old secret moves over.
    await conn.execute(
        "UPDATE subscriptions SET previous_secret = secret, previous_secret_until = ?, "
        "secret = ?, updated_at = ? WHERE id = ?",
        (previous_until, new_secret, now, sub_id),
    )


async def set_status(
    conn: Connection,
    sub_id: str,
    status: SubscriptionStatus,
    *,
    reason: str | None,
    now: float,
) -> None:
    """Enable or disable by request; either way the failure window starts afresh."""
    await conn.execute(
        "UPDATE subscriptions SET status = ?, disabled_reason = ?, failing_since = NULL, "
        "updated_at = ? WHERE id = ?",
        (status, reason if status == SubscriptionStatus.DISABLED else None, now, sub_id),
    )
    if status == SubscriptionStatus.ACTIVE:
        # Deliveries wait while their subscription is not active; they may be due now.
        announce(conn, Work.DELIVERIES)


async def note_failure_windows(
    conn: Connection, windows: dict[str, tuple[bool, float | None]]
) -> None:
    """Move each subscription's failure window: ``windows[id] = (succeeded, first_failure)``.

    ``succeeded`` means an attempt succeeded, which closes the window; ``first_failure`` is when
    the first failure after the last success (or after the window already open) happened.
    """
    await conn.executemany(
        "UPDATE subscriptions SET failing_since = "
        "CASE WHEN ? THEN ? ELSE coalesce(failing_since, ?) END WHERE id = ?",
        [(succeeded, first, first, sub_id) for sub_id, (succeeded, first) in windows.items()],
    )


async def disable_failing(
    conn: Connection, sub_ids: list[str], *, failing_before: float, now: float
) -> list[Subscription]:
    """Disable those of ``sub_ids`` that are active and have failed since ``failing_before`` or
    earlier; return them as disabled."""
    if not sub_ids:
        return []
    async with conn.execute(
        f"SELECT {_SELECT} FROM subscriptions WHERE id IN ({marks(sub_ids)}) AND status = 'active' "
        f"AND failing_since IS NOT NULL AND failing_since <= ? ORDER BY id{conn.for_update}",
        (*sub_ids, failing_before),
    ) as cursor:
        failing = [_from_row(row) for row in await cursor.fetchall()]
    disabled = []
    for sub in failing:
        reason = (
            f"every delivery attempt since {isoformat(sub.failing_since)} failed "
            f"({(now - (sub.failing_since or now)) / 3600:.1f} h)"
        )
        await conn.execute(
            "UPDATE subscriptions SET status = 'disabled', disabled_reason = ?, updated_at = ? "
            "WHERE id = ?",
            (reason, now, sub.id),
        )
        disabled.append(
            replace(sub, status=SubscriptionStatus.DISABLED, disabled_reason=reason, updated_at=now)
        )
    return disabled
