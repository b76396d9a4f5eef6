"""Ways to reach a reelhook under test, and assertions shared by the API tests."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import httpx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from service.app.factory import create_app
from service.app.settings import Settings
from service.core.ids import new_id
from service.core.models import Subscription, SubscriptionStatus
from service.storage import events
from service.storage.database import Connection, Database, Result
from service.storage.postgres import PostgresDatabase, numbered
from tests.servers import Sink, loopback_socket, run_server, url_of

if TYPE_CHECKING:
    from service.storage.postgres import RawConnection


def store_target(tmp_path: Path) -> str | Path:
    """This pass's store: the PostgreSQL database under ``--store postgresql``
    (``REELHOOK_TEST_DATABASE_URL``), else a SQLite file in ``tmp_path``."""
    return os.environ.get("REELHOOK_TEST_DATABASE_URL") or tmp_path / "db.sqlite"


ADMIN_KEY = "rh_test_admin_key_0123456789abcdef"


@asynccontextmanager
async def in_process(
    settings: Settings, **app_options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ASGIApp]]:
    """``create_app(settings)`` with its lifespan running, and a client sending the admin key."""
    app = create_app(settings, **app_options)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url="http://reelhook.test",
            headers={"X-API-Key": ADMIN_KEY},
        ) as http,
    ):
        yield http, manager.app


@asynccontextmanager
async def api_client(settings: Settings, **app_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``create_app(settings)`` with its lifespan running, sending the admin key."""
    async with in_process(settings, **app_options) as (http, _):
        yield http


@asynccontextmanager
async def served(
    settings: Settings, sock: socket.socket, **app_options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook (``create_app(settings, **app_options)``) served by a real uvicorn on ``sock``,
    and an admin client for it."""
    app = create_app(settings, **app_options)
    async with (
        run_server(app, sock, on_shutdown=app.state.end_streams) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}) as http,
    ):
        yield http


@asynccontextmanager
async def served_with_sink(
    settings_for_url: Callable[..., Settings], **overrides: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Sink, str]]:
    """reelhook served on loopback (so its simulator can call back to it), and a recording sink:
    (admin client, sink, sink URL). ``settings_for_url`` is the ``settings_factory`` fixture."""
    sink = Sink()
    with loopback_socket() as sock:
        settings = settings_for_url(PUBLIC_URL=url_of(sock), **overrides)
        async with run_server(sink.app()) as sink_url, served(settings, sock) as http:
            yield http, sink, sink_url


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """The response is reelhook's JSON error with ``status`` and ``code``, naming ``field``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    if field is not None:
        assert field in error["details"]["fields"], error
        assert field in error["message"], error
    return error


TERMINAL = ("succeeded", "failed", "canceled", "expired")


async def wait_for_job(
    http: httpx.AsyncClient, job_id: str, statuses: Collection[str] = TERMINAL, within: float = 15
) -> dict[str, Any]:
    """Read ``GET /v1/jobs/{id}`` until its status is one of ``statuses``; fail after ``within``."""
    with anyio.fail_after(within):
        while True:
            response = await http.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            if job["status"] in statuses:
                return job
            await anyio.sleep(0.02)


async def send_without_key(
    http: httpx.AsyncClient, method: str, path: str, **options: Any
) -> httpx.Response:
    """Send a request through ``http`` with its X-API-Key header removed."""
    request = http.build_request(method, path, **options)
    del request.headers["X-API-Key"]
    return await http.send(request)


class FakeClock:
    """The tests' one clock, for ``create_app(clock=...)`` and the workers (epoch seconds).

    ``FakeClock()`` follows the system clock shifted by ``offset``, so a test can make retries and
    deadlines due at once while real waits still pass; ``FakeClock.frozen(at)`` stands still at
    ``at`` (default: now) until the test moves it. ``advance`` moves either kind forward.
    """

    def __init__(self, *, at: float | None = None) -> None:
        self._at = at
        self.offset = 0.0

    @classmethod
    def frozen(cls, at: float | None = None) -> FakeClock:
        return cls(at=time.time() if at is None else at)

    def __call__(self) -> float:
        return (time.time() if self._at is None else self._at) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


REPO = Path(__file__).resolve().parent.parent


def run_serve(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """``python -m service serve`` with only these ``REELHOOK_*`` variables (prefix dropped) and
    a data dir in ``tmp_path``; for start-up checks that end the process."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REELHOOK_")}
    environ.update({f"REELHOOK_{name}": value for name, value in variables.items()})
    environ["REELHOOK_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stored_dicts(settings: Settings, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """:func:`stored`, each row a dict by column name."""
    return [dict(zip(names, row, strict=True)) for names, row in _stored(settings, sql, params)]


def stored(settings: Settings, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows ``sql`` (``?`` placeholders) reads from the store of ``settings``, whichever engine:
    the SQLite file opened read-only, or the PostgreSQL database on a connection of its own.

    Blocking (a short query outside the event loop of the reelhook under test): call it from a
    thread, or where the service is stopped.
    """
    return [row for _, row in _stored(settings, sql, params)]


def _stored(
    settings: Settings, sql: str, params: Sequence[Any]
) -> list[tuple[list[str], tuple[Any, ...]]]:
    if settings.uses_postgresql:

        async def fetch() -> list[tuple[list[str], tuple[Any, ...]]]:
            conn = await asyncpg.connect(settings.database_url)
            try:
                rows = await conn.fetch(numbered(sql), *params)
                return [(list(row.keys()), tuple(row.values())) for row in rows]
            finally:
                await conn.close()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fetch()).result()
    uri = f"file:{settings.database_path}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        cursor = db.execute(sql, tuple(params))
        names = [column[0] for column in cursor.description or ()]
        return [(names, tuple(row)) for row in cursor.fetchall()]


async def stored_async(
    settings: Settings, sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """:func:`stored` from async code, without blocking the event loop."""
    return await anyio.to_thread.run_sync(stored, settings, sql, params)


TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def subscription_row(
    sub_id: str,
    url: str = "http://127.0.0.1:9/",
    *,
    at: float,
    ordering: str = "none",
    owner_key_id: str = "key_test",
) -> Subscription:
    """An active subscription to every event, created at ``at``, as the store keeps it: for
    tests that write subscriptions through ``storage.subscriptions`` rather than the API."""
    return Subscription(
        id=sub_id,
        owner_key_id=owner_key_id,
        url=url,
        secret=TEST_SECRET,
        event_types=(),
        models=(),
        headers={},
        description="",
        status=SubscriptionStatus.ACTIVE,
        created_at=at,
        updated_at=at,
        ordering=ordering,
    )


def ping_event(
    at: float,
    subscription_ids: Sequence[str] = (),
    *,
    type_: str = "ping",
    payload: bytes = b'{"type":"ping"}',
    deferred: Sequence[str] = (),
) -> events.NewEvent:
    """An event created at ``at`` with a delivery to each of ``subscription_ids`` due then (and
    to ``deferred`` through one fan-out row), as storage tests append it with ``events.append``."""
    return events.NewEvent(
        id=new_id("evt"),
        type=type_,
        job_id=None,
        created_at=at,
        payload=payload,
        subscription_ids=list(subscription_ids),
        first_attempt_at=at,
        deferred=list(deferred),
    )


async def queue_due(db: Database, sub_id: str, count: int, *, due: float) -> None:
    """``count`` events created at ``due``, each with one pending delivery to ``sub_id`` due
    then, through ``storage.events`` (20,000 per transaction)."""
    batch = [ping_event(due, [sub_id]) for _ in range(count)]
    for start in range(0, count, 20_000):
        async with db.transaction(durable=False) as conn:
            await events.append(conn, batch[start : start + 20_000])


async def query_plan(db: Database, sql: str, params: tuple[object, ...]) -> list[str]:
    """The plan of ``sql`` on this store, a line per step: SQLite's ``EXPLAIN QUERY PLAN``
    details, or PostgreSQL's ``EXPLAIN`` with sequential scans off (tables this small may well be
    read whole otherwise, which says nothing of the indexes)."""
    if db.dialect == "sqlite":
        rows = await db.reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        return [str(row[3]) for row in rows]
    assert isinstance(db, PostgresDatabase)
    async with db.pool.acquire() as raw, raw.transaction():
        await raw.execute("SET LOCAL enable_seqscan = off")
        return [str(row[0]) for row in await raw.fetch(f"EXPLAIN {numbered(sql)}", *params)]


class StatementsKept(Connection):
    """Runs each statement on ``inner`` and keeps it (``sent``: SQL and parameters), so that a
    test can read the plan of what a storage function sent."""

    def __init__(self, inner: Connection) -> None:
        self.dialect = inner.dialect
        self.inner = inner
        self.sent: list[tuple[str, list[Any]]] = []

    async def run(self, sql: str, params: Sequence[Any]) -> Result:
        self.sent.append((sql, list(params)))
        return await self.inner.run(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.inner.executemany(sql, rows)


async def deliveries_read(raw: RawConnection, sql: str, params: Sequence[Any]) -> int:
    """PostgreSQL: run ``sql`` (``?`` placeholders) under EXPLAIN ANALYZE on ``raw`` and return
    the entries of ``deliveries`` and of its indexes that its plan's nodes read, over all their
    loops: the rows they passed on and the rows they filtered out. A write is carried out: run it
    in a transaction the caller rolls back."""
    plan = json.loads(
        await raw.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {numbered(sql)}", *params)
    )

    def read(node: dict[str, Any]) -> int:
        here = 0
        if node.get("Relation Name") == "deliveries" or node.get("Index Name", "").startswith(
            "deliveries"
        ):
            passed = (
                node["Actual Rows"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
            )
            here = passed * node["Actual Loops"]
        return here + sum(read(child) for child in node.get("Plans", []))

    return read(plan[0]["Plan"])
