"""Choosing the store (REELHOOK_DATABASE_URL), its per-dialect migrations, and refusing a schema
newer than the code: on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
import asyncpg
import httpx
import pytest

from service.app.settings import SettingsError
from service.cli import main
from service.storage import jobs, transfer
from service.storage.database import (
    Database,
    SchemaTooNew,
    StoreError,
    latest_migration,
    migrations,
)
from service.storage.postgres import PostgresDatabase, numbered
from service.storage.sqlite import SqliteDatabase
from tests.conftest import settings_for
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, in_process, served, wait_for_job

pytestmark = pytest.mark.anyio


def test_the_default_store_is_the_sqlite_file_in_the_data_directory(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, DATABASE_URL="")
    assert settings.database_url == f"sqlite:///{tmp_path / 'reelhook.db'}"
    assert not settings.uses_postgresql
    assert settings_for(tmp_path, DATABASE_URL="postgresql://db.internal/reelhook").uses_postgresql


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://db/reelhook", "unknown scheme 'mysql'"),
        ("sqlite://", "needs a file path"),
        ("postgresql:///reelhook", "needs a host"),
    ],
)
def test_a_bad_database_url_is_refused_naming_the_setting(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_for(tmp_path, DATABASE_URL=url)
    assert str(refused.value).startswith("REELHOOK_DATABASE_URL: ")
    assert problem in str(refused.value)


def test_a_password_in_the_url_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_for(tmp_path, DATABASE_URL="mysql://user:hunter2@db/reelhook")
    assert "hunter2" not in str(refused.value)


def test_placeholders_are_numbered_outside_quotes_only() -> None:
    assert numbered("SELECT ? , '?' , \"?\" , ?") == "SELECT $1 , '?' , \"?\" , $2"


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    for name in ("0001_initial.sql", "0002_mine.sql", "0002_theirs.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(StoreError, match="two sqlite migrations numbered 2"):
        migrations("sqlite", tmp_path)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_shipped_migrations_are_numbered_one_to_latest(dialect: str) -> None:
    versions = [version for version, _ in migrations(dialect)]
    assert versions == list(range(1, latest_migration(dialect) + 1))


@pytest.mark.sqlite_only("SQLite's file and its user_version; the PostgreSQL twin follows")
async def test_a_sqlite_file_of_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "reelhook.db"
    async with Database.open(path):
        pass
    newer = latest_migration("sqlite") + 1
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(SchemaTooNew, match=f"schema version {newer}"):
        async with Database.open(f"sqlite:///{path}"):
            pass
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == newer


async def test_a_postgresql_database_of_a_newer_schema_is_refused(pg_database: str) -> None:
    async with Database.open(pg_database) as db:
        assert isinstance(db, PostgresDatabase)
    newer = latest_migration("postgresql") + 1
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", newer)
    finally:
        await conn.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {newer}"):
        async with Database.open(pg_database):
            pass


async def test_a_node_started_before_its_database_is_reachable_waits_for_it(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A node and its PostgreSQL are often started together: connections first dropped
    mid-handshake, then refused, are retried until the server answers (here through a loopback
    relay that only starts forwarding after a while); the password-free log says why it waits."""
    target = urlsplit(pg_database)
    dropped = 0
    dropped_twice = anyio.Event()

    async def drop(stream: anyio.abc.SocketStream) -> None:
        nonlocal dropped
        dropped += 1
        if dropped == 2:
            dropped_twice.set()
        await stream.aclose()

    async def relay(client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", target.port or 5432) as server:

            async def pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    async for chunk in source:
                        await sink.send(chunk)
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await sink.send_eof()

            async with anyio.create_task_group() as pumps:
                pumps.start_soon(pump, client, server)
                pumps.start_soon(pump, server, client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    relayed = pg_database.replace(f":{target.port}/", f":{port}/")
    opened = anyio.Event()
    dropping, closed = anyio.CancelScope(), anyio.Event()

    async def serve_drops() -> None:
        with dropping:
            async with listener:
                await listener.serve(drop)
        closed.set()

    async def start() -> None:
        async with Database.open(relayed) as db:
            assert await db.nodes_alive() == 1
            opened.set()

    with caplog.at_level(logging.WARNING, logger="service.storage.postgres"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_drops)
            tg.start_soon(start)
            with anyio.fail_after(10):
                await dropped_twice.wait()
            assert not opened.is_set()
            dropping.cancel()
            await closed.wait()
            # Nothing listens on the port for a moment (refused), then the server is there.
            await anyio.sleep(0.3)
            relaying = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
            tg.start_soon(relaying.serve, relay)
            with anyio.fail_after(15):
                await opened.wait()
            tg.cancel_scope.cancel()
        await relaying.aclose()
    waits = [r.getMessage() for r in caplog.records if "not reachable yet" in r.getMessage()]
    assert waits and all(str(target.username) not in text for text in waits)


async def test_nodes_starting_together_apply_each_migration_once(pg_database: str) -> None:
    """Migrations run under an advisory lock: of four nodes opening a fresh database at once,
    one migrates, the others find it done (no duplicate-object errors)."""

    async def start() -> None:
        async with Database.open(pg_database):
            pass

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(start)
    conn = await asyncpg.connect(pg_database)
    try:
        versions = [row[0] for row in await conn.fetch("SELECT version FROM schema_version")]
    finally:
        await conn.close()
    assert sorted(versions) == list(range(1, latest_migration("postgresql") + 1))


@pytest.mark.sqlite_only("how a SQLite file is named")
async def test_the_sqlite_url_and_the_path_open_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "reelhook.db"
    async with Database.open(f"sqlite:///{path}") as db:
        assert isinstance(db, SqliteDatabase)
    assert path.exists()


def test_reelhook_migrate_brings_the_store_up_to_date(
    tmp_path: Path,
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REELHOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REELHOOK_SECRET_KEYS", "shared-secret-key-0123456789")
    monkeypatch.delenv("REELHOOK_DATABASE_URL", raising=False)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out == f"sqlite schema at version {latest_migration()}\n"
    monkeypatch.setenv("REELHOOK_DATABASE_URL", pg_database)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out == (
        f"postgresql schema at version {latest_migration('postgresql')}\n"
    )
    with closing(sqlite3.connect(tmp_path / "reelhook.db")) as conn:
        conn.execute("PRAGMA user_version = 999")
    monkeypatch.delenv("REELHOOK_DATABASE_URL")
    assert main(["migrate"]) == 1
    assert "newer than this reelhook" in capsys.readouterr().err


def test_nodes_on_postgresql_must_be_given_their_shared_secret_keys(tmp_path: Path) -> None:
    """Generated keys live in one node's data directory: the callback URLs and file links it
    signs would not verify on the others."""
    with pytest.raises(SettingsError) as refused:
        settings_for(tmp_path, DATABASE_URL="postgresql://db.internal/reelhook", SECRET_KEYS="")
    assert str(refused.value).startswith("REELHOOK_SECRET_KEYS: several nodes on PostgreSQL")


# --- reelhook copy ------------------------------------------------------------------------------


async def test_reelhook_copy_moves_a_sqlite_deployment_to_postgresql_once(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs, events (with their stream positions), subscriptions, deliveries, attempts, callbacks
    and keys arrive in PostgreSQL as they were, verified by counts; the same API reads the same
    answers from the copy; a second copy is refused."""
    job = {"model": "trinetra/kling-v3", "input": {"prompt": "A ferry at dawn"}}
    sink = Sink()
    with loopback_socket() as sock:
        # Served, so that its simulator can call back.
        sqlite = settings_for(tmp_path / "data", DATABASE_URL="", PUBLIC_URL=url_of(sock))
        async with run_server(sink.app()) as sink_url, served(sqlite, sock) as http:
            created = await http.post("/v1/subscriptions", json={"url": f"{sink_url}/hook"})
            assert created.status_code == 201, created.text
            ids = []
            for _ in range(3):
                response = await http.post("/v1/jobs", json=job)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            for job_id in ids:
                await wait_for_job(http, job_id)
            with anyio.fail_after(10):
                await sink.wait_for(lambda s: len(s.received) == 6)
            before = {path: (await http.get(path)).json() for path in READ_BACK}
            # Two console sessions; one signs out.
            signed_out, kept = await _console_session(http), await _console_session(http)
            async with httpx.AsyncClient(base_url=http.base_url, headers=signed_out) as browser:
                token = _csrf_of(await browser.get("/console/jobs"))
                out = await browser.post("/console/sign-out", data={"csrf": token})
                assert out.status_code == 303, out.text

    # An account-webhook document still waiting for its job: a paid-for result, copied too.
    # Received now: one from 1970 is past retention, which the copy's node may run before the
    # check below (it did once under load).
    early = b'{"id": "task_not_yet_recorded", "status": "succeeded"}'
    async with Database.open(sqlite.database_url) as source, source.transaction() as conn:
        await jobs.record_unmatched(
            conn,
            provider="trinetra",
            provider_job_id="task_not_yet_recorded",
            received_at=time.time(),
            reason="no job with this id yet",
            body=early,
        )

    monkeypatch.setenv("REELHOOK_DATA_DIR", str(sqlite.data_dir))
    monkeypatch.setenv("REELHOOK_SECRET_KEYS", "test-secret-key-0123456789")
    assert await anyio.to_thread.run_sync(main, ["copy", "--to", pg_database]) == 0
    assert await anyio.to_thread.run_sync(main, ["copy", "--to", pg_database]) == 1

    on_postgresql = settings_for(tmp_path / "node", DATABASE_URL=pg_database)
    async with in_process(on_postgresql) as (http, app):
        after = {path: (await http.get(path)).json() for path in READ_BACK}
        # The sign-out came along: that session is still refused, the other still works.
        for cookies, status in ((signed_out, 303), (kept, 200)):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://reelhook.test",
                headers=cookies,
            ) as browser:
                page = await browser.get("/console/jobs")
                assert page.status_code == status, page.text
    assert after == before
    assert len(before["/v1/jobs"]["data"]) == 3 and len(before["/v1/events"]["data"]) == 6
    async with Database.open(pg_database) as copied, copied.transaction() as conn:
        waiting = await jobs.claim_unmatched(conn, "trinetra", "task_not_yet_recorded", ids[0])
    assert waiting == [early]
    assert {d["status"] for d in before["/v1/deliveries"]["data"]} == {"succeeded"}


async def test_every_table_of_either_schema_is_copied_or_said_not_to_be(
    tmp_path: Path, pg_database: str
) -> None:
    """A table added by a migration but not to ``transfer.TABLES`` would be lost by
    ``reelhook copy`` (as unmatched account documents once were)."""
    copied = {table for table, _ in transfer.TABLES}
    async with Database.open(f"sqlite:///{tmp_path / 'reelhook.db'}") as sqlite_db:
        rows = await sqlite_db.reader.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        in_sqlite = {row["name"] for row in rows}
    async with Database.open(pg_database) as pg_db:
        rows = await pg_db.reader.execute_fetchall(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        in_postgresql = {row["table_name"] for row in rows}
    assert copied <= in_sqlite and copied <= in_postgresql
    assert (in_sqlite | in_postgresql) - copied == set(transfer.NOT_COPIED)


async def _console_session(http: httpx.AsyncClient) -> dict[str, str]:
    """The Cookie header of a new console session signed in with the admin key on ``http``'s
    server."""
    async with httpx.AsyncClient(base_url=http.base_url) as browser:
        form = await browser.get("/console/sign-in")
        answer = await browser.post(
            "/console/sign-in",
            data={"csrf": _csrf_of(form), "api_key": ADMIN_KEY, "next": ""},
        )
        assert answer.status_code == 303, answer.text
        return {"Cookie": "; ".join(f"{name}={value}" for name, value in browser.cookies.items())}


def _csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


READ_BACK = ("/v1/jobs", "/v1/events", "/v1/deliveries", "/v1/subscriptions", "/v1/keys")
