"""SQL for a subscription's health: how its recent delivery attempts went, and its last failure."""

from __future__ import annotations

from dataclasses import dataclass

from service.storage.database import Connection

# The console shows the start of a failed answer; the attempt log keeps up to 20 kB of it.
EXCERPT_BYTES = 300


@dataclass(frozen=True, slots=True)
class LastFailure:
    attempted_at: float
    status_code: int | None
    error: str | None
    excerpt: str


@dataclass(frozen=True, slots=True)
class Health:
    """Attempts since ``since``: how many, how many got a 2xx, and the latest failure ever."""

    since: float
    attempts: int
    succeeded: int
    last_failure: LastFailure | None

    @property
    def success_rate(self) -> float | None:
        """The share of attempts that got a 2xx, from 0 to 1; None without attempts."""
        return self.succeeded / self.attempts if self.attempts else None


async def of_subscription(conn: Connection, sub_id: str, *, since: float) -> Health:
    async with conn.execute(
        "SELECT count(*) AS attempts,"
        " coalesce(sum(CASE WHEN a.status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END), 0)"
        " AS succeeded"
        " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE d.subscription_id = ? AND a.attempted_at >= ?",
        (sub_id, since),
    ) as cursor:
        counts = await cursor.fetchone()
    async with conn.execute(
        "SELECT a.attempted_at, a.status_code, a.error, substr(a.response_body, 1, ?) AS excerpt"
        " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " WHERE d.subscription_id = ?"
        " AND (a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)"
        " ORDER BY a.id DESC LIMIT 1",
        (EXCERPT_BYTES, sub_id),
    ) as cursor:
        failed = await cursor.fetchone()
    last_failure = None
    if failed is not None:
        last_failure = LastFailure(
            attempted_at=failed["attempted_at"],
            status_code=failed["status_code"],
            error=failed["error"],
            excerpt=excerpt_text(failed["excerpt"]),
        )
    return Health(
        since=since,
        attempts=int(counts["attempts"]) if counts else 0,
        succeeded=int(counts["succeeded"]) if counts else 0,
        last_failure=last_failure,
    )


def excerpt_text(excerpt: bytes | str | None) -> str:
    """A stored answer's start as text (it may end inside a UTF-8 sequence)."""
    if excerpt is None:
        return ""
    if isinstance(excerpt, str):
        return excerpt
    if b"\x00" in excerpt:
        return "(binary data)"
    return excerpt.decode("utf-8", errors="replace")
