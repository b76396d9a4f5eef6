"""``/metrics`` (Prometheus, one registry per app) and ``/readyz``.

The metrics are read as Prometheus reads them: the exposition text parsed by prometheus-client's
own parser, before and after real traffic over loopback (service, simulator and subscriber).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api import operations
from service.core.ids import new_id, timestamp_of
from service.delivery.dispatcher import Dispatcher
from tests.conftest import SettingsFactory
from tests.servers import Sink, free_port, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, FakeClock, api_client, served

pytestmark = pytest.mark.anyio

TRINETRA = {"model": "trinetra/kling-v3", "input": {"prompt": "A paper boat in the rain"}}
APIFRAME = {"model": "apiframe/kling-2.5-turbo-pro", "input": {"prompt": "A fox in the snow"}}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(
    http: httpx.AsyncClient, condition: Callable[[Samples], bool], within: float = 10.0
) -> Samples:
    """Scrape until ``condition`` holds: counters move just after the I/O they count, and the
    outbox rows are recorded just after that."""
    with anyio.fail_after(within):
        while True:
            samples = await scrape(http)
            if condition(samples):
                return samples
            await anyio.sleep(0.02)


async def test_metrics_move_as_callbacks_and_deliveries_happen(
    settings_factory: SettingsFactory,
) -> None:
    sink = Sink()
    service_sock = loopback_socket()
    async with run_server(sink.app()) as sink_url:
        settings = settings_factory(PUBLIC_URL=url_of(service_sock))
        async with served(settings, service_sock) as http:
            before = await scrape(http)
            created = await http.post("/v1/subscriptions", json={"url": f"{sink_url}/hook"})
            assert created.status_code == 201, created.text
            for job in (TRINETRA, APIFRAME):
                submitted = await http.post("/v1/jobs", json=job)
                assert submitted.status_code == 202, submitted.text
            # two job.submitted, apiframe's job.running, two job.succeeded
            await sink.wait_for(lambda s: len(s.on("/hook")) == 5)
            forged = await http.post("/v1/callbacks/trinetra/not-a-token", json={})
            assert forged.status_code == 401, forged.text
            # The stored-state gauges are one read of the store, at most a second old: the
            # read that sees both jobs succeeded saw their deliveries written (one transaction).
            after = await scrape_until(
                http,
                lambda s: (
                    value(s, "reelhook_delivery_attempts_total", outcome="succeeded") == 5
                    and value(s, "reelhook_jobs", status="succeeded") == 2
                    and value(s, "reelhook_outbox_depth") == 0
                ),
            )

    for name in (
        "reelhook_delivery_attempts_total",
        "reelhook_callbacks_total",
        "reelhook_delivery_lag_seconds_count",
    ):
        assert not any(key[0] == name and v for key, v in before.items()), name
    assert value(before, "reelhook_jobs", status="succeeded") == 0

    assert value(after, "reelhook_callbacks_total", provider="trinetra", outcome="applied") == 1
    # apiframe's progress and completed webhooks
    assert value(after, "reelhook_callbacks_total", provider="apiframe", outcome="applied") == 2
    assert value(after, "reelhook_callbacks_total", provider="trinetra", outcome="bad_token") == 1
    assert value(after, "reelhook_jobs", status="succeeded") == 2
    assert value(after, "reelhook_jobs", status="pending") == 0
    assert value(after, "reelhook_delivery_attempts_total", outcome="succeeded") == 5
    assert value(after, "reelhook_delivery_lag_seconds_count") == 5
    assert 0 < value(after, "reelhook_delivery_lag_seconds_sum") < 5 * 30
    for provider in ("trinetra", "apiframe"):
        count = value(after, "reelhook_provider_request_seconds_count", provider=provider)
        assert count == 1, provider
        assert value(after, "reelhook_provider_request_seconds_sum", provider=provider) > 0
    assert value(after, "reelhook_provider_request_seconds_count", provider="segmind") == 0
    assert value(after, "reelhook_outbox_depth") == 0
    assert value(after, "reelhook_oldest_pending_delivery_age_seconds") == 0


async def test_provider_errors_are_counted_by_reason(settings_factory: SettingsFactory) -> None:
    service_sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(service_sock))
    async with served(settings, service_sock) as http:
        throttle = await http.put("/sim/_sim/scenario", json={"submit_status": 429})
        assert throttle.status_code == 200, throttle.text
        throttled = await http.post("/v1/jobs", json=TRINETRA)
        assert throttled.status_code == 202, throttled.text  # kept pending for a retry
        samples = await scrape(http)
    errors = value(
        samples, "reelhook_provider_errors_total", provider="trinetra", reason="http_429"
    )
    assert errors == 1
    assert value(samples, "reelhook_jobs", status="pending") == 1


async def test_an_unreachable_provider_is_a_connection_error(api: httpx.AsyncClient) -> None:
    pending = await api.post("/v1/jobs", json=TRINETRA)  # the simulator's URL is dead here
    assert pending.status_code == 202, pending.text
    # Sent once by the request and once more at once by the retry worker (the fixture's schedule
    # is "0"), then failed: wait for the end, so the count does not race the retry.
    with anyio.fail_after(10):
        while True:
            job = (await api.get(f"/v1/jobs/{pending.json()['id']}")).json()
            if job["status"] == "failed":
                break
            await anyio.sleep(0.02)
    samples = await scrape(api)
    reason = "connection"
    assert value(samples, "reelhook_provider_errors_total", provider="trinetra", reason=reason) == 2
    assert value(samples, "reelhook_provider_request_seconds_count", provider="trinetra") == 0


async def test_the_outbox_gauges_show_a_waiting_delivery_and_its_age(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    clock = FakeClock.frozen()
    settings = settings_factory(RETRY_SCHEDULE="0,3600")
    async with api_client(settings, clock=clock) as http:
        sub = await http.post("/v1/subscriptions", json={"url": f"{dead_url}/hook"})
        assert sub.status_code == 201, sub.text
        pinged = await http.post(f"/v1/subscriptions/{sub.json()['id']}/test")
        assert pinged.status_code == 202, pinged.text
        await scrape_until(
            http,
            lambda s: value(s, "reelhook_delivery_attempts_total", outcome="unreachable") == 1,
        )
        clock.advance(90)
        samples = await scrape(http)
    assert value(samples, "reelhook_outbox_depth") == 1
    assert value(samples, "reelhook_oldest_pending_delivery_age_seconds") == pytest.approx(90)
    assert value(samples, "reelhook_delivery_attempts_total", outcome="succeeded") == 0
    assert value(samples, "reelhook_delivery_lag_seconds_count") == 0


async def test_each_app_counts_in_its_own_registry(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    first = settings_factory(DATA_DIR=str(tmp_path / "first"))
    second = settings_factory(DATA_DIR=str(tmp_path / "second"))
    async with api_client(first) as one, api_client(second) as two:
        forged = await one.post("/v1/callbacks/apiframe/forged", json={})
        assert forged.status_code == 401, forged.text
        counted = await scrape(one)
        untouched = await scrape(two)
    labels = {"provider": "apiframe", "outcome": "bad_token"}
    assert value(counted, "reelhook_callbacks_total", **labels) == 1
    assert value(untouched, "reelhook_callbacks_total", **labels) == 0


async def test_callbacks_for_unknown_providers_share_one_label(api: httpx.AsyncClient) -> None:
    for name in ("nope", "other", "segmind"):
        response = await api.post(f"/v1/callbacks/{name}/token", json={})
        assert response.status_code == 404, response.text
    samples = await scrape(api)
    callbacks = {dict(k[1])["provider"] for k in samples if k[0] == "reelhook_callbacks_total"}
    assert callbacks == {"unknown", "segmind"}
    assert (
        value(samples, "reelhook_callbacks_total", provider="unknown", outcome="unknown_provider")
        == 2
    )


def test_an_id_tells_when_it_was_made() -> None:
    made = new_id("evt")
    assert abs(timestamp_of(made) - time.time()) < 5
    for bad in ("evt_short", "evt_" + "!" * 26, ""):
        with pytest.raises(ValueError):
            timestamp_of(bad)


# --- /readyz ------------------------------------------------------------------------------------


async def test_ready_when_the_database_takes_writes_and_the_dispatcher_runs(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert {key: body[key] for key in ("status", "checks")} == {
        "status": "ready",
        "checks": {"database": "writable", "dispatcher": "running"},
    }
    assert set(body) == {"status", "checks", "node", "cluster"}


async def test_readiness_and_metrics_describe_the_node_and_the_cluster(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    """/readyz names this node and gives the cluster's figures (nodes alive, leader, outbox
    depth); /metrics has them too. On SQLite the one node is the whole cluster and leads; on
    PostgreSQL the figures come from the nodes table and the leader lease."""
    settings = settings_factory(RETRY_SCHEDULE="0,3600")
    async with api_client(settings) as http:
        sub = await http.post("/v1/subscriptions", json={"url": f"{dead_url}/hook"})
        assert sub.status_code == 201, sub.text
        pinged = await http.post(f"/v1/subscriptions/{sub.json()['id']}/test")
        assert pinged.status_code == 202, pinged.text
        with anyio.fail_after(10):
            # A PostgreSQL node takes the leader lease with its first heartbeat, just after start.
            while (body := (await http.get("/readyz")).json())["cluster"]["leader"] is None:  # noqa: ASYNC110 - asks the service
                await anyio.sleep(0.05)
        samples = await scrape(http)
    node, cluster = body["node"], body["cluster"]
    assert node["id"].startswith("node_") and node["leader"] is True
    assert cluster == {
        "store": "postgresql" if settings.uses_postgresql else "sqlite",
        "nodes_alive": 1,
        "leader": node["id"],
        "outbox_depth": 1,
        "outbox_depth_capped": False,
    }
    assert value(samples, "reelhook_cluster_nodes_alive") == 1
    assert value(samples, "reelhook_cluster_leader") == 1
    assert value(samples, "reelhook_outbox_depth") == 1


@asynccontextmanager
async def write_lock_held(database: Path) -> AsyncIterator[None]:
    """Another process's view: a connection holding the database's write lock. Its calls run in
    a worker thread, as a blocking wait for the lock must not stall the service's event loop."""
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        await anyio.to_thread.run_sync(other.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(other.execute, "ROLLBACK")
    finally:
        other.close()


@pytest.mark.sqlite_only("holds SQLite's write lock from another connection")
async def test_not_ready_while_the_database_cannot_be_written(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operations, "READY_WRITE_WAIT", 0.3)
    settings = settings_factory()
    async with api_client(settings) as http:
        async with write_lock_held(settings.database_path):
            blocked = await http.get("/readyz")
        recovered = await http.get("/readyz")
        # The probe left the shared writer usable: ordinary writes still work.
        created = await http.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/h"})

    assert blocked.status_code == 503, blocked.text
    body: dict[str, Any] = blocked.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"].startswith("not writable")
    assert body["checks"]["dispatcher"] == "running"
    assert recovered.status_code == 200, recovered.text
    assert created.status_code == 201, created.text


async def test_not_ready_when_the_dispatcher_is_not_running(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ends_at_once(self: Dispatcher) -> None:
        return None

    monkeypatch.setattr(Dispatcher, "run", ends_at_once)
    async with api_client(settings_factory()) as http:
        ready = await http.get("/readyz")
        health = await http.get("/healthz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"] == {"database": "writable", "dispatcher": "not running"}
    assert health.status_code == 503, health.text


async def test_a_stopping_node_drains_serving_while_readyz_says_so(tmp_path: Path) -> None:
    """With REELHOOK_DRAIN, SIGTERM first turns /readyz to 503 ("server": "draining") while
    every other request is still served, so a load balancer's health check takes the node out
    before its connections close (docs/scaling.md); then the process stops as usual."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELHOOK_")}
    env.update(
        REELHOOK_PORT=str(port),
        REELHOOK_DATA_DIR=str(tmp_path / "data"),
        REELHOOK_ADMIN_KEY=ADMIN_KEY,
        REELHOOK_DRAIN="2",
        REELHOOK_LOG_LEVEL="WARNING",
    )
    if "REELHOOK_TEST_DATABASE_URL" in os.environ:
        env.update(
            REELHOOK_DATABASE_URL=os.environ["REELHOOK_TEST_DATABASE_URL"],
            REELHOOK_SECRET_KEYS="test-secret-key-0123456789",
        )
    process = await anyio.open_process(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": ADMIN_KEY}, trust_env=False
        ) as http:
            with anyio.fail_after(30):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                while (draining := await http.get("/readyz")).status_code == 200:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            served_meanwhile = await http.get("/v1/jobs")
        with anyio.fail_after(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert draining.status_code == 503, draining.text
    assert draining.json()["checks"]["server"] == "draining"
    assert draining.json()["status"] == "not ready"
    assert served_meanwhile.status_code == 200, served_meanwhile.text
    # Stopped by itself (uvicorn ends by re-raising the SIGTERM it handled: -15).
    assert process.returncode in (0, -signal.SIGTERM)
