"""Retention: old events, attempts and raw callbacks are pruned; open deliveries never are.

Time is a :class:`FakeClock` handed to the service, so rows are made "old" by moving the clock,
not by waiting. Traffic is real: the simulator over loopback sends the callbacks, a sink and an
unreachable subscriber receive (or do not receive) the deliveries.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from service.app.factory import create_app
from service.app.settings import Settings
from service.ops.metrics import Metrics
from service.ops.retention import Retention
from service.storage.database import Database
from tests.conftest import SettingsFactory
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, FakeClock, api_client, stored_dicts

pytestmark = pytest.mark.anyio

HOUR = 3600.0
JOB = {"model": "trinetra/kling-v3", "input": {"prompt": "A tram in the fog"}}


async def rows(settings: Settings, sql: str) -> list[dict[str, Any]]:
    return await anyio.to_thread.run_sync(stored_dicts, settings, sql)


async def wait_for_rows(settings: Settings, sql: str, count: int) -> None:
    with anyio.fail_after(10):
        while True:
            if len(await rows(settings, sql)) >= count:
                return
            await anyio.sleep(0.02)


async def test_a_pass_prunes_what_is_old_and_settled_and_keeps_the_rest(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    start = 1_790_000_000.0
    clock = FakeClock.frozen(start)
    sink = Sink()
    service_sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(service_sock), RETENTION=str(HOUR), RETRY_SCHEDULE="0,3600"
    )
    async with (
        run_server(sink.app()) as sink_url,
        run_server(create_app(settings, clock=clock), service_sock) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}) as http,
    ):
        ok = (await http.post("/v1/subscriptions", json={"url": f"{sink_url}/ok"})).json()
        # Unreachable and retried an hour later: its job.succeeded deliveries stay pending.
        held = await http.post(
            "/v1/subscriptions",
            json={"url": f"{dead_url}/held", "event_types": ["job.succeeded"]},
        )
        assert held.status_code == 201, held.text
        for _ in range(2):
            assert (await http.post("/v1/jobs", json=JOB)).status_code == 202
        await sink.wait_for(lambda s: len(s.on("/ok")) == 4)  # submitted and succeeded, twice
        await wait_for_rows(settings, "SELECT * FROM attempts WHERE status_code IS NULL", 2)
        clock.advance(HOUR / 2)  # a young event: a ping half an hour later
        assert (await http.post(f"/v1/subscriptions/{ok['id']}/test")).status_code == 202
        await sink.wait_for(lambda s: len(s.on("/ok")) == 5)
        await wait_for_rows(settings, "SELECT * FROM attempts", 7)

    before = {table: await rows(settings, f"SELECT * FROM {table}") for table in TABLES}
    assert len(before["callbacks"]) == 2 and len(before["events"]) == 5

    async with Database.open(settings.database_url) as db:
        metrics = Metrics()
        retention = Retention(db, metrics, clock=clock, max_age=HOUR, batch_size=1, pause=0)
        next_due = await retention.prune(start + HOUR + 10)
    after = {table: await rows(settings, f"SELECT * FROM {table}") for table in TABLES}
    wal = settings.database_path.with_name("reelhook.db-wal")

    # The job.submitted events went, with their deliveries and attempts; the job.succeeded
    # events stay while the held subscription's deliveries are pending; the ping is too young.
    assert sorted(e["type"] for e in after["events"]) == ["job.succeeded", "job.succeeded", "ping"]
    kept = {e["id"] for e in after["events"]}
    assert {d["event_id"] for d in after["deliveries"]} == kept
    pending = [d for d in before["deliveries"] if d["status"] == "pending"]
    assert len(pending) == 2
    assert [d for d in after["deliveries"] if d["status"] == "pending"] == pending
    # Attempts: the held deliveries' (open) and the ping's (young) stay; the settled old go.
    open_or_young = {d["id"] for d in pending} | {
        d["id"] for d in after["deliveries"] if d["event_id"] in _ids(after, "ping")
    }
    assert {a["delivery_id"] for a in after["attempts"]} == open_or_young
    assert len(after["attempts"]) == 3
    assert after["callbacks"] == []
    assert len(after["jobs"]) == 2, "jobs are kept"
    assert next_due == pytest.approx(start + HOUR / 2 + HOUR)  # when the ping comes of age
    if not settings.uses_postgresql:
        assert not wal.exists() or wal.stat().st_size == 0, "the WAL was truncated"
    pruned = {
        table: metrics.registry.get_sample_value("reelhook_pruned_rows_total", {"table": table})
        for table in ("events", "deliveries", "attempts", "callbacks")
    }
    # Two job.submitted events, each delivered to the one subscription that wanted it; their two
    # attempts, and the two of the job.succeeded deliveries that settled.
    assert pruned == {"events": 2, "deliveries": 2, "attempts": 4, "callbacks": 2}


TABLES = ("events", "deliveries", "attempts", "callbacks", "jobs")


def _ids(snapshot: dict[str, list[dict[str, Any]]], event_type: str) -> set[str]:
    return {e["id"] for e in snapshot["events"] if e["type"] == event_type}


async def test_the_background_task_prunes_at_start_and_answers_for_it_in_metrics(
    settings_factory: SettingsFactory,
) -> None:
    start = 1_790_000_000.0
    sink = Sink()
    settings = settings_factory(RETENTION="60")
    async with run_server(sink.app()) as sink_url:
        async with api_client(settings, clock=FakeClock.frozen(start)) as http:
            sub = (await http.post("/v1/subscriptions", json={"url": f"{sink_url}/a"})).json()
            assert (await http.post(f"/v1/subscriptions/{sub['id']}/test")).status_code == 202
            await sink.wait_for(lambda s: len(s.on("/a")) == 1)
            await wait_for_rows(settings, "SELECT * FROM attempts", 1)
            assert len((await http.get("/v1/events")).json()["data"]) == 1

        # Two minutes later the ping is older than REELHOOK_RETENTION: the start-up pass goes.
        async with api_client(settings, clock=FakeClock.frozen(start + 120)) as http:
            with anyio.fail_after(10):
                while True:
                    if not (await http.get("/v1/events")).json()["data"]:
                        break
                    await anyio.sleep(0.02)
            metrics = (await http.get("/metrics")).text
            still = await http.get(f"/v1/subscriptions/{sub['id']}")
    assert 'reelhook_pruned_rows_total{table="events"} 1.0' in metrics
    assert 'reelhook_pruned_rows_total{table="attempts"} 1.0' in metrics
    assert still.status_code == 200, "subscriptions are kept"


async def test_retention_zero_keeps_everything(settings_factory: SettingsFactory) -> None:
    """``REELHOOK_RETENTION=0``: however old the rows, neither a start of the service nor a run of
    the task deletes any (and the run returns at once instead of looping)."""
    start = 1_790_000_000.0
    sink = Sink()
    service_sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(service_sock), RETENTION="0")
    async with (
        run_server(sink.app()) as sink_url,
        run_server(create_app(settings, clock=FakeClock.frozen(start)), service_sock) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}) as http,
    ):
        subscribed = await http.post("/v1/subscriptions", json={"url": f"{sink_url}/ok"})
        assert subscribed.status_code == 201, subscribed.text
        assert (await http.post("/v1/jobs", json=JOB)).status_code == 202
        await sink.wait_for(lambda s: len(s.on("/ok")) == 2)  # job.submitted, job.succeeded
        await wait_for_rows(settings, "SELECT * FROM attempts", 2)
    before = {table: await rows(settings, f"SELECT * FROM {table}") for table in TABLES}
    assert [len(before[table]) for table in TABLES] == [2, 2, 2, 1, 1], before

    ten_years_on = FakeClock.frozen(start + 10 * 365 * 24 * HOUR)
    async with api_client(settings, clock=ten_years_on) as http:  # its retention task is off
        assert (await http.get("/v1/jobs")).status_code == 200
    async with Database.open(settings.database_url) as db:
        retention = Retention(db, Metrics(), clock=ten_years_on, max_age=0)
        with anyio.fail_after(1):
            await retention.run()  # returns at once instead of looping
    after = {table: await rows(settings, f"SELECT * FROM {table}") for table in TABLES}
    assert after == before


async def test_an_empty_database_needs_no_pass_until_something_is_stored(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with Database.open(settings.database_url) as db:
        retention = Retention(db, Metrics(), clock=FakeClock.frozen(), max_age=HOUR)
        assert await retention.prune(2_000_000_000.0) is None
