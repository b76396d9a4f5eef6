"""Figure 1's floor: the least a durable callback can cost on reelhook's stack.

A raw ASGI app on the server reelhook runs (uvicorn with uvloop and httptools, proxy headers on),
on reelhook's callback route, doing only what docs/contract.md asks of every durable callback
and nothing reelhook adds on top:

- the callback token checked (:class:`service.core.tokens.Tokens`, HMAC with a derived key);
- the body read and parsed (orjson), its status taken;
- in one group commit per batch, on one writer thread with one trip there and back (SQLite,
  WAL, ``synchronous = FULL``), three rows: the callback with its digest (unique per job, the
  duplicate check), the job's new status and document, and the event;
- 200 answered after the commit.

No job state machine, no event document (the event carries the body as received), no audit,
no metrics, no limits, no outbox. So figure 1 minus this is what reelhook's own work costs, and
this alone is what figure 1's CPU target has to fit above. ``python -m bench.floor FD DB JOBS``
(as :func:`bench.procs.start_floor` runs it) seeds ``JOBS`` waiting jobs named as
:func:`bench.seed.job_id` names them, then serves the listening socket inherited as ``FD``.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from bench.bare import serve
from bench.procs import SECRET_KEY
from bench.seed import job_id
from service.core.tokens import InvalidToken, Tokens

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, document BLOB, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, digest TEXT NOT NULL, body BLOB NOT NULL,
    received_at REAL NOT NULL, UNIQUE (job_id, digest)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, type TEXT NOT NULL, payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
"""

_Pending = tuple[str, str, bytes, str, "asyncio.Future[None]"]


def open_store(path: str, jobs: int) -> sqlite3.Connection:
    """The floor's database, durable as reelhook's, with ``jobs`` jobs waiting for a callback."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO jobs VALUES (?, 'running', NULL, ?)",
        ((job_id(index), now) for index in range(jobs)),
    )
    conn.execute("COMMIT")
    return conn


def stored(path: str) -> tuple[int, int, int]:
    """(jobs succeeded, callbacks stored, events stored) in the floor's database at ``path``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        jobs = conn.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0]
        callbacks = conn.execute("SELECT count(*) FROM callbacks").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    return int(jobs), int(callbacks), int(events)


class Floor:
    """The ASGI app: callbacks wait in a list for the writer's next commit."""

    def __init__(self, conn: sqlite3.Connection, tokens: Tokens) -> None:
        self.conn = conn
        self.tokens = tokens
        self.pending: list[_Pending] = []
        self.wake = asyncio.Event()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="floor-writer")
        self.writer: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        parts = scope["path"].split("/")  # "", "v1", "callbacks", provider, token
        try:
            if len(parts) != 5 or parts[2] != "callbacks" or scope["method"] != "POST":
                raise InvalidToken
            job = self.tokens.verify_callback(parts[4], parts[3])
        except InvalidToken:
            await answer(send, 404, b'{"error":"not_found"}')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            status = orjson.loads(body)["status"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await answer(send, 422, b'{"error":"invalid_body"}')
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((job, hashlib.sha256(body).hexdigest(), body, str(status), done))
        self.wake.set()
        await done
        await answer(send, 200, b'{"received":true}')

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.writer = asyncio.create_task(self.write_batches())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.writer is not None:
                    self.writer.cancel()
                self.thread.shutdown()
                self.conn.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def write_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            try:
                await loop.run_in_executor(self.thread, self.commit, batch)
            except Exception as exc:  # each request then fails with a 500; none is lost
                for pending in batch:
                    pending[4].set_exception(exc)
                continue
            for pending in batch:
                pending[4].set_result(None)

    def commit(self, batch: list[_Pending]) -> None:
        """On the writer thread: the batch's rows, then the commit that makes them durable. A
        callback already stored (the same job and digest) changes nothing more; a failure
        rolls the whole batch back."""
        now = time.time()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = [
                (job, body, status)
                for job, digest, body, status, _ in batch
                if conn.execute(
                    "INSERT OR IGNORE INTO callbacks (job_id, digest, body, received_at)"
                    " VALUES (?, ?, ?, ?)",
                    (job, digest, body, now),
                ).rowcount
            ]
            conn.executemany(
                "UPDATE jobs SET status = ?, document = ?, updated_at = ? WHERE id = ?",
                [(status, body, now, job) for job, body, status in fresh],
            )
            conn.executemany(
                "INSERT INTO events (job_id, type, payload, created_at) VALUES (?, ?, ?, ?)",
                [(job, f"job.{status}", body, now) for job, body, status in fresh],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


async def answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    fd, path, jobs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    serve(Floor(open_store(path, jobs), Tokens([SECRET_KEY])), fd)


if __name__ == "__main__":
    main()
