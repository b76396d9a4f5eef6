"""The multi-node scenarios of docs/scaling.md: three ``reelhook serve`` processes on one
PostgreSQL database behind Caddy, the simulator calling back through Caddy, blobs on S3 (moto),
subscriber sinks counting every delivery (tests/multinode.py). Each scenario asserts a balanced
ledger (nothing lost; duplicates only where at-least-once allows them, bounded) and publishes it
(printed, and one JSON line in ``multinode-ledgers.jsonl`` under the pytest base temp).

These start their own PostgreSQL databases whatever ``--store`` says, so they run once per
``make test``: in the PostgreSQL pass (marker ``multinode``, deselected in the SQLite pass as
every test that starts PostgreSQL nodes is, tests/conftest.py; run them alone with
``pytest --store postgresql tests/test_multinode.py``). ``REELHOOK_MULTINODE_DELIVERIES``
sizes the SIGKILL fan-out (2,000 here; ``python -m bench.multinode`` runs the issue's 20,000).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.core.tokens import Tokens
from service.storage.database import migrations
from tests.helpers.callbacks import trinetra_done
from tests.helpers.keys import new_key
from tests.helpers.s3 import moto_server, require_moto, s3_client
from tests.multinode import (
    NODE_TIMEOUT,
    SECRET_KEY,
    Fleet,
    Ledger,
    Sinks,
    caddy_binary,
    caddyfile,
    elapsed,
    fleet,
    require,
    served_sinks,
)
from tests.postgres import Cluster, throwaway_cluster
from tests.sse_client import open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.multinode]

DELIVERIES = int(os.environ.get("REELHOOK_MULTINODE_DELIVERIES", "2000"))
MODEL = "trinetra/kling-v2.5"
SAMPLE_MP4 = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto's S3 server for the module (each fleet makes its own bucket); also checks Caddy."""
    require("Caddy (/usr/bin/caddy, Debian package caddy)", caddy_binary() is not None)
    require_moto()
    with moto_server() as url:
        yield url


@pytest.fixture
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp()


# --- helpers --------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after ``within`` seconds."""
    with anyio.move_on_after(within):
        while not await check():  # noqa: ASYNC110 - asks the database
            await anyio.sleep(0.1)
        return
    pytest.fail(f"not within {within} s: {what}")


async def submit_jobs(
    http: httpx.AsyncClient, count: int, prompt: str, *, concurrency: int = 16
) -> list[str]:
    """Create ``count`` jobs; return their ids (each answered 202, asserted)."""
    limit = anyio.Semaphore(concurrency)
    ids: list[str] = []

    async def one(number: int) -> None:
        async with limit:
            job = {"model": MODEL, "input": {"prompt": f"{prompt} {number}"}}
            response = await http.post("/v1/jobs", json=job)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])

    async with anyio.create_task_group() as tg:
        for number in range(count):
            tg.start_soon(one, number)
    return ids


async def ping_all(http: httpx.AsyncClient, subscription_ids: list[str], each: int) -> int:
    """``each`` test events to every subscription; return how many were answered 202."""
    limit = anyio.Semaphore(16)
    answered = 0

    async def one(sub_id: str) -> None:
        nonlocal answered
        async with limit:
            response = await http.post(f"/v1/subscriptions/{sub_id}/test")
            assert response.status_code == 202, response.text
            answered += 1

    async with anyio.create_task_group() as tg:
        for _ in range(each):
            for sub_id in subscription_ids:
                tg.start_soon(one, sub_id)
    return answered


async def in_flight_by_owner(f: Fleet) -> dict[str, int]:
    rows = await f.sql(
        "SELECT lease_owner, count(*) FROM deliveries WHERE status = 'inflight' GROUP BY 1"
    )
    return {row[0]: row[1] for row in rows}


async def node_ids(f: Fleet) -> set[str]:
    return {row[0] for row in await f.sql("SELECT id FROM nodes")}


async def swept(f: Fleet, before: set[str], within: float) -> str:
    """Wait until one of the nodes in ``before`` has been swept out as dead; return its id."""
    with anyio.fail_after(within):
        while True:
            gone = before - await node_ids(f)
            if gone:
                (dead,) = gone
                return dead
            await anyio.sleep(0.05)


async def statuses(f: Fleet, table: str) -> dict[str, int]:
    rows = await f.sql(f"SELECT status, count(*) FROM {table} GROUP BY status")
    return {row[0]: row[1] for row in rows}


class Load:
    """Jobs created through Caddy for as long as it runs, each with an Idempotency-Key and
    retried under that key until answered 202, as a careful client does: what a restart costs
    shows as retries, never as a job made twice or lost."""

    def __init__(self, http: httpx.AsyncClient, prompt: str, rate: float = 20.0) -> None:
        self.http = http
        self.prompt = prompt
        self.interval = 1.0 / rate
        self.sent = 0
        self.acknowledged: list[str] = []
        self.retries: Counter[str] = Counter()
        self.stopping = anyio.Event()

    async def _one(self, number: int) -> None:
        key = f"{self.prompt}-{number}-{uuid.uuid4().hex[:8]}"
        job = {"model": MODEL, "input": {"prompt": f"{self.prompt} {number}"}}
        with anyio.fail_after(60):
            while True:
                try:
                    response = await self.http.post(
                        "/v1/jobs", json=job, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError as exc:
                    self.retries[type(exc).__name__] += 1
                else:
                    if response.status_code == 202:
                        self.acknowledged.append(response.json()["id"])
                        return
                    assert response.status_code >= 500 or response.status_code == 429, response.text
                    self.retries[str(response.status_code)] += 1
                await anyio.sleep(0.2)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while not self.stopping.is_set():
                tg.start_soon(self._one, self.sent)
                self.sent += 1
                await anyio.sleep(self.interval)


async def all_done(f: Fleet, job_ids: list[str], within: float) -> None:
    async def finished() -> bool:
        done = await f.value(
            "SELECT count(*) FROM jobs WHERE id = ANY($1::text[]) AND status = 'succeeded'",
            job_ids,
        )
        return bool(done == len(job_ids))

    try:
        await eventually(finished, within, "every acknowledged job succeeded")
        await f.outbox_empty(within)
    except (pytest.fail.Exception, TimeoutError):
        left = await f.sql(
            "SELECT status, count(*) FROM jobs WHERE id = ANY($1::text[]) GROUP BY 1", job_ids
        )
        outbox = await statuses(f, "deliveries")
        print(f"\nunfinished: jobs {[tuple(r) for r in left]}, deliveries {outbox}\n{f.logs()}")
        raise


# --- 0. the Caddy configuration is the deploy file's ----------------------------------------------


def test_the_harness_balances_with_the_deploy_files_caddy_settings() -> None:
    """The harness's Caddyfile is deploy/Caddyfile.cluster with only the site address, the
    upstreams, the global options and the health-check interval changed."""
    text = caddyfile(8000, [9001, 9002, 9003])
    assert "http://127.0.0.1:8000 {" in text
    assert "reverse_proxy 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003 {" in text
    for kept in ("lb_policy least_conn", "health_uri /readyz", "lb_try_duration 5s"):
        assert kept in text
    assert "admin off" in text and "email" not in text


# --- 1. SIGKILL one node at 30 % of a fan-out -----------------------------------------------------


async def test_a_node_sigkilled_at_30_percent_of_a_fan_out_loses_nothing(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    """Every delivery arrives; duplicates at most what the killed node had in flight; its
    leases are taken over (the rest resumes) within 15 s of the kill."""
    # Ten subscribers: each job's two events make twenty deliveries, so the API calls stay few.
    subscribers = 10
    jobs = max(1, DELIVERIES // (2 * subscribers))
    sinks = Sinks()
    sinks.shut()
    async with served_sinks(sinks) as sink_url, fleet(tmp_path, pg_database, moto) as f:
        sinks.senders = f.pids
        paths = await f.subscribe(sinks, sink_url, subscribers)
        job_ids = await submit_jobs(f.api, jobs, "fan-out")

        async def finished() -> bool:
            return bool(
                await _count(f, "SELECT count(*) FROM jobs WHERE status = 'succeeded'", jobs)
            )

        # Every event exists before the fan-out starts, so all of it is still to come. (A job
        # whose result overtook the provider's answer to its submit has no job.submitted.)
        await eventually(finished, 60 + jobs / 20, "every job succeeded")
        expected_count = await f.value("SELECT count(*) FROM deliveries")
        sinks.open()
        await sinks.wait_for(lambda: sinks.total >= 0.3 * expected_count, 120)
        # The node that sent the latest requests: it holds claims now.
        (number, _), *_ = Counter(node for *_, node, _ in sinks.sent_by[-50:]).most_common(1)
        victim = f.nodes[number - 1]
        alive = await node_ids(f)
        victim.kill()
        with elapsed() as since_kill:
            received_at_kill = sinks.total
            held = await in_flight_by_owner(f)
            done_at_kill = (await statuses(f, "deliveries")).get("succeeded", 0)
            dead = await swept(f, alive, within=30)
            bound = held.get(dead, 0)

            async def taken_over() -> bool:
                left = await f.value(
                    "SELECT count(*) FROM deliveries WHERE status = 'inflight' "
                    "AND lease_owner = $1",
                    dead,
                )
                return bool(left == 0)

            await eventually(taken_over, 30, "the dead node's leases handed back")
            resumed_after = since_kill()
            await all_done(f, job_ids, within=120 + DELIVERIES / 50)
            drained_after = since_kill()
        expected = await f.expected_pairs(paths)
        await f.never_polled()
    delivered, duplicates, lost = sinks.tally(expected)
    ledger = Ledger(
        "sigkill at 30 % of a fan-out",
        sent=jobs,
        acknowledged=len(job_ids),
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={
            "deliveries": expected_count,
            "received_at_kill": received_at_kill,
            "succeeded_at_kill": done_at_kill,
            "killed_node": victim.number,
            "killed_node_in_flight": bound,
            "taken_over_after_s": round(resumed_after, 2),
            "drained_after_s": round(drained_after, 2),
        },
    )
    ledger.publish(ledgers)
    assert len(expected) == expected_count >= jobs * subscribers
    assert 0 < done_at_kill < expected_count
    assert ledger.balanced, ledger
    assert duplicates <= bound, ledger
    assert resumed_after <= 15, ledger


# --- 2. SIGSTOP past the lease, then SIGCONT ------------------------------------------------------


async def test_a_node_stopped_past_its_lease_has_its_late_outcomes_refused(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    """A node SIGSTOPped with deliveries claimed (some sent and waiting, some not yet sent) is
    declared dead and its claims go to the others. When it is continued, its late outcomes are
    refused, and it sends nothing under the claims it lost: no delivery goes out from two nodes
    under one claim."""
    subscribers, each = 6, 40
    sinks = Sinks()
    sinks.shut()
    # Four sends at a time and sixteen claimed per node: every node holds claims, some of them
    # not sent yet, while the subscribers hold the requests.
    async with (
        served_sinks(sinks) as sink_url,
        fleet(tmp_path, pg_database, moto, DELIVERY_CONCURRENCY="4") as f,
    ):
        sinks.senders = f.pids
        paths = await f.subscribe(sinks, sink_url, subscribers)
        answered = await ping_all(f.api, list(paths), each)
        total = subscribers * each

        async def every_node_holds_claims() -> bool:
            return len(await in_flight_by_owner(f)) == len(f.nodes)

        await eventually(every_node_holds_claims, 30, "every node holding claims")
        victim = f.nodes[0]
        alive = await node_ids(f)
        victim.pause()
        with elapsed() as since_pause:
            held = await f.sql(
                "SELECT event_id, subscription_id, lease_owner FROM deliveries "
                "WHERE status = 'inflight'"
            )
            dead = await swept(f, alive, within=30)
            swept_after = since_pause()
            stopped_claims = {(paths[row[1]], row[0]) for row in held if row[2] == dead}
            bound = len(stopped_claims)

            async def reclaimed() -> bool:
                return bool(
                    await f.value(
                        "SELECT count(*) FROM deliveries WHERE status = 'inflight' "
                        "AND lease_owner = $1",
                        dead,
                    )
                    == 0
                )

            await eventually(reclaimed, 15, "the stopped node's claims handed back")
            sinks.open()
            await f.outbox_empty(60)
        resumed_at = time.monotonic()
        victim.resume()

        async def refused_logged() -> bool:
            assert victim.proc is not None
            return "refused" in victim.proc.output(20000)

        await eventually(refused_logged, 20, "the resumed node's late outcomes refused")
        # Give the resumed node time to do whatever it still would (send, record).
        await anyio.sleep(NODE_TIMEOUT)
        await f.outbox_empty(30)
        assert victim.proc is not None
        log = victim.proc.output(20000)
        attempts = await f.sql(
            "SELECT delivery_id, count(*) AS n, min(status_code) AS lo, max(status_code) AS hi "
            "FROM attempts GROUP BY delivery_id"
        )
        expected = await f.expected_pairs(paths)
    delivered, duplicates, lost = sinks.tally(expected)
    late = [s for s in sinks.sent_by if s[2] == victim.number and s[3] > resumed_at]
    unknown = [s for s in sinks.sent_by if s[2] == 0]
    senders = Counter((path, event, node) for path, event, node, _ in sinks.sent_by)
    twice_by_one_node = [key for key, n in senders.items() if n > 1]
    by_two_nodes = {
        pair for pair, n in Counter((path, event) for path, event, _ in senders).items() if n > 1
    }
    refused = sum(
        int(line.split("refused ", 1)[1].split()[0])
        for line in log.splitlines()
        if "refused " in line
    )
    ledger = Ledger(
        "sigstop past the lease, then sigcont",
        sent=total,
        acknowledged=answered,
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={
            "stopped_node_in_flight": bound,
            "swept_after_s": round(swept_after, 2),
            "late_outcomes_refused": refused,
            "sent_after_resume_by_stopped_node": len(late),
            "senders_unknown": len(unknown),
        },
    )
    ledger.publish(ledgers)
    assert ledger.balanced, ledger
    assert refused >= 1, log
    assert "declared dead" in log, log
    assert late == [], f"the resumed node sent under claims it had lost: {late[:5]}"
    # Sent by two nodes only where the stopped node's claim had gone out before it stopped.
    assert twice_by_one_node == []
    assert by_two_nodes <= stopped_claims
    assert unknown == []
    assert duplicates <= bound, ledger
    # One recorded attempt per delivery, a success: the refused outcomes left nothing behind.
    assert {(row["n"], row["lo"], row["hi"]) for row in attempts} == {(1, 204, 204)}
    assert len(attempts) == total


# --- 3. kill the leader ---------------------------------------------------------------------------


async def test_killing_the_leader_moves_deadlines_and_retention_to_another_node(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    """Jobs whose results never come expire on the node that takes the lead after the leader is
    SIGKILLed, exactly one ``job.expired`` each; retention prunes there too."""
    jobs = 20
    sinks = Sinks()
    async with (
        served_sinks(sinks) as sink_url,
        fleet(
            tmp_path,
            pg_database,
            moto,
            scenario={"callback": "lost"},
            JOB_DEADLINE="8",
            RETENTION="3",
        ) as f,
    ):
        paths = await f.subscribe(sinks, sink_url, 1)
        (sub_id,) = paths
        pinged = await ping_all(f.api, [sub_id], 10)
        pinged_at = time.monotonic()
        job_ids = await submit_jobs(f.api, jobs, "lost result")
        await sinks.wait_for(lambda: sinks.total >= pinged + jobs, 30)  # pings, job.submitted
        leader = await f.leader()
        # Old enough for retention (3 s), which the first leader passed at start and next runs
        # a minute later: only a new leader prunes them now.
        await anyio.sleep(max(0.0, pinged_at + 3.5 - time.monotonic()))
        before_kill = await f.sql("SELECT event_id, subscription_id FROM deliveries")
        assert (await statuses(f, "jobs")) == {"submitted": jobs}, "expired before the kill"
        leader.kill()

        async def expired() -> bool:
            return (await statuses(f, "jobs")) == {"expired": jobs}

        async def pruned() -> bool:
            return not await f.value("SELECT count(*) FROM events WHERE type = 'ping'")

        await eventually(expired, 30, "every job expired by the new leader")
        await eventually(pruned, 30, "the old pings pruned by the new leader")
        await f.outbox_empty(30)
        successor = await f.leader()
        pruned_rows = await successor.metric("reelhook_pruned_rows_total")
        per_job = await f.sql(
            "SELECT job_id, count(*) FROM events WHERE type = 'job.expired' GROUP BY job_id"
        )
        after = await f.sql("SELECT event_id, subscription_id FROM deliveries")
        await f.never_polled()
    expected = {(paths[row[1]], row[0]) for row in [*before_kill, *after]}
    delivered, duplicates, lost = sinks.tally(expected)
    expired_events = Counter(
        body["data"]["id"] for body in sinks.bodies.values() if body["type"] == "job.expired"
    )
    ledger = Ledger(
        "kill the leader",
        sent=jobs + 10,
        acknowledged=len(job_ids) + pinged,
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={
            "jobs_expired": len(per_job),
            "job_expired_events_per_job": sorted({row[1] for row in per_job}),
            "pruned_rows_on_new_leader": pruned_rows,
        },
    )
    ledger.publish(ledgers)
    assert successor is not leader
    assert ledger.balanced, ledger
    assert sorted(row[0] for row in per_job) == sorted(job_ids)
    assert {row[1] for row in per_job} == {1}
    assert expired_events == Counter(dict.fromkeys(job_ids, 1))
    assert pruned_rows > 0


# --- 4. one callback at two nodes at once ---------------------------------------------------------


async def test_one_callback_delivered_to_two_nodes_at_once_yields_one_terminal_event(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    jobs = 20
    tokens = Tokens([SECRET_KEY])
    sinks = Sinks()
    async with (
        served_sinks(sinks) as sink_url,
        fleet(tmp_path, pg_database, moto, scenario={"delay": 3600}) as f,
    ):
        paths = await f.subscribe(sinks, sink_url, 1)
        job_ids = await submit_jobs(f.api, jobs, "twice")
        documents = [(await f.api.get(f"/v1/jobs/{job_id}")).json() for job_id in job_ids]
        answers: list[int] = []
        clients = [f.client(node, key="") for node in f.nodes[:2]]
        try:
            # Each callback at two nodes at once, bypassing Caddy, as a provider retrying
            # through two load-balancer paths would.
            for job in documents:
                token = tokens.callback(job["id"], "trinetra")
                body = trinetra_done(job["provider_job_id"])
                replies = await asyncio.gather(
                    *(
                        http.post(
                            f"/v1/callbacks/trinetra/{token}",
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                        for http in clients
                    )
                )
                answers += [reply.status_code for reply in replies]
        finally:
            for http in clients:
                await http.aclose()
        await f.outbox_empty(30)
        per_job = await f.sql(
            "SELECT job_id, count(*) FROM events WHERE type = 'job.succeeded' GROUP BY job_id"
        )
        outcomes = Counter(row[0] for row in await f.sql("SELECT outcome FROM callbacks"))
        expected = await f.expected_pairs(paths)
    delivered, duplicates, lost = sinks.tally(expected)
    succeeded = Counter(
        body["data"]["id"] for body in sinks.bodies.values() if body["type"] == "job.succeeded"
    )
    ledger = Ledger(
        "one callback at two nodes at once",
        sent=len(answers),
        acknowledged=sum(1 for status in answers if status < 300),
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={"terminal_events": len(per_job), "callback_outcomes": dict(outcomes)},
    )
    ledger.publish(ledgers)
    assert ledger.balanced and ledger.acknowledged == ledger.sent, ledger
    assert {row[1] for row in per_job} == {1} and len(per_job) == jobs
    assert succeeded == Counter(dict.fromkeys(job_ids, 1))


# --- 5. SSE across nodes --------------------------------------------------------------------------


async def test_a_stream_on_one_node_sees_the_others_events_and_resumes_on_a_third(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    """A client streaming from node A sees every event nodes B and C append (at once, through
    callbacks arriving anywhere) in the log's order, with no gap; it reconnects to node C with
    Last-Event-ID and gets exactly the rest."""
    jobs = 40
    async with fleet(tmp_path, pg_database, moto) as f:
        a, b, c = f.nodes
        on_a, on_b, on_c = f.client(a), f.client(b), f.client(c)
        seen: list[dict[str, Any]] = []
        try:
            async with open_stream(on_a) as stream:
                start = await stream.position()
                async with anyio.create_task_group() as tg:
                    # Appenders on two nodes at once (their callbacks land anywhere).
                    tg.start_soon(submit_jobs, on_b, jobs // 2, "from b")
                    tg.start_soon(submit_jobs, on_c, jobs // 2, "from c")
                    seen += await stream.events(jobs, within=30)
            # Every event is in the log before the stream resumes elsewhere.
            await eventually(
                lambda: _count(f, "SELECT count(*) FROM events WHERE type = 'job.succeeded'", jobs),
                30,
                "every job succeeded",
            )
            total = await f.value("SELECT count(*) FROM events")
            last = seen[-1]["seq"]
            async with open_stream(on_c, Last_Event_ID=last) as stream:
                seen += await stream.events(total - len(seen), within=30)
            log = await f.sql("SELECT id FROM events WHERE seq > $1 ORDER BY seq", int(start))
        finally:
            for http in (on_a, on_b, on_c):
                await http.aclose()
    ids = [event["id"] for event in seen]
    logged = [row["id"] for row in log]
    ledger = Ledger(
        "sse across nodes",
        sent=jobs,
        acknowledged=jobs,
        expected=len(logged),
        delivered=len(set(ids) & set(logged)),
        duplicates=len(ids) - len(set(ids)),
        lost=len(set(logged) - set(ids)),
        detail={"events_on_node_a": jobs, "events_after_resuming_on_node_c": len(ids) - jobs},
    )
    ledger.publish(ledgers)
    # Each job's job.succeeded, and its job.submitted unless the result overtook the provider's
    # answer to the submit (tests/test_multinode.py's simulator answers in a second).
    assert jobs < len(logged) <= 2 * jobs
    assert ids == logged, "the stream's order is the log's, with no gap and no repeat"
    assert ledger.balanced and ledger.duplicates == 0, ledger


async def _count(f: Fleet, sql: str, wanted: int) -> bool:
    return bool(await f.value(sql) == wanted)


# --- 6. a cluster-wide rate limit -----------------------------------------------------------------


async def test_one_key_hammering_through_the_balancer_gets_about_its_limit_in_total(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    rate, burst, requests = 5.0, 20, 150
    async with fleet(tmp_path, pg_database, moto, RATE_LIMIT=str(rate), RATE_BURST=str(burst)) as f:
        key = await new_key(f.api, "jobs:read")
        answers: Counter[int] = Counter()
        limit = anyio.Semaphore(12)

        async def one(http: httpx.AsyncClient) -> None:
            async with limit:
                answers[(await http.get("/v1/jobs", params={"limit": "1"})).status_code] += 1

        async with f.client(None, key=key) as hammer:
            with elapsed() as took:
                async with anyio.create_task_group() as tg:
                    for _ in range(requests):
                        tg.start_soon(one, hammer)
                seconds = took()
        refused_per_node = [
            await node.metric("reelhook_rate_limited_requests_total") for node in f.nodes
        ]
    allowed = answers[200]
    # What one bucket allows in that time, plus the chunk (1 token) each node may hold.
    ceiling = burst + rate * seconds + len(refused_per_node)
    ledger = Ledger(
        "cluster-wide rate limit",
        sent=requests,
        acknowledged=allowed,
        expected=requests,
        delivered=answers[200] + answers[429],
        duplicates=0,
        lost=requests - answers[200] - answers[429],
        detail={
            "allowed": allowed,
            "refused_429": answers[429],
            "ceiling": round(ceiling, 1),
            "per_node_limit_times_nodes": round(3 * (burst + rate * seconds), 1),
            "refused_per_node": refused_per_node,
            "seconds": round(seconds, 2),
        },
    )
    ledger.publish(ledgers)
    assert ledger.balanced, ledger
    assert burst <= allowed <= ceiling, ledger
    assert sum(refused_per_node) == answers[429]
    assert sum(1 for count in refused_per_node if count) >= 2, "the balancer spread the load"


# --- 7. one node mirrors, another serves with Range -----------------------------------------------


async def test_a_video_mirrored_by_one_node_is_served_by_every_node_with_range(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    sinks = Sinks()
    async with (
        served_sinks(sinks) as sink_url,
        fleet(tmp_path, pg_database, moto, MIRROR_OUTPUTS="true") as f,
    ):
        paths = await f.subscribe(sinks, sink_url, 1)
        (job_id,) = await submit_jobs(f.api, 1, "mirrored")
        await sinks.wait_for(
            lambda: any(body["type"] == "job.succeeded" for body in sinks.bodies.values()), 30
        )
        (event,) = [body for body in sinks.bodies.values() if body["type"] == "job.succeeded"]
        (output,) = event["data"]["outputs"]
        link: str = output["mirror_url"]
        assert link.startswith(f"{f.lb}/v1/files/"), output
        served = []
        async with httpx.AsyncClient(trust_env=False) as anonymous:
            for node in f.nodes:
                direct = link.replace(f.lb, node.url)
                part = await anonymous.get(direct, headers={"Range": "bytes=100-1123"})
                whole = await anonymous.get(direct)
                served.append((part.status_code, part.content, whole.status_code, whole.content))
        async with s3_client(f.moto) as s3:
            listed = await s3.list_objects_v2(Bucket=f.bucket)
        local = [p for node in f.nodes for p in (node.data_dir / "blobs").rglob("*") if p.is_file()]
        await f.outbox_empty(30)
        expected = await f.expected_pairs(paths)
    digest = hashlib.sha256(SAMPLE_MP4).hexdigest()
    delivered, duplicates, lost = sinks.tally(expected)
    ranged_ok = sum(
        1
        for part_status, part, whole_status, whole in served
        if (part_status, part, whole_status, whole) == (206, SAMPLE_MP4[100:1124], 200, SAMPLE_MP4)
    )
    ledger = Ledger(
        "mirror on one node, Range on every node",
        sent=1,
        acknowledged=1,
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={"nodes_serving_range": ranged_ok, "job": job_id},
    )
    ledger.publish(ledgers)
    assert ledger.balanced, ledger
    assert ranged_ok == len(f.nodes), [s[:1] + s[2:3] for s in served]
    assert [item["Key"] for item in listed.get("Contents", [])] == [f"videos/{digest}"]
    assert local == [], "blobs live in the bucket, not on a node's disk"


# --- 8. a rolling restart across a migration ------------------------------------------------------


async def migrate_to(url: str, version: int) -> None:
    """Apply the PostgreSQL migrations up to ``version`` only, as an older release left it."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for number, script in migrations("postgresql"):
            if number <= version:
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
    finally:
        await conn.close()


async def test_a_rolling_restart_across_a_migration_loses_nothing(
    tmp_path: Path, pg_database: str, moto: str, ledgers: Path
) -> None:
    """The database is one migration behind; three nodes start at once and exactly one applies
    it (under the advisory lock) while the others wait. Then, with jobs arriving through Caddy,
    ``reelhook migrate`` runs beside the live nodes and each node is restarted in turn (SIGTERM,
    start, ready): every acknowledged job succeeds and every delivery arrives."""
    newest = max(number for number, _ in migrations("postgresql"))
    await migrate_to(pg_database, newest - 1)
    sinks = Sinks()
    async with (
        served_sinks(sinks) as sink_url,
        fleet(tmp_path, pg_database, moto, migrate_first=False) as f,
    ):
        versions = [row[0] for row in await f.sql("SELECT version FROM schema_version ORDER BY 1")]
        paths = await f.subscribe(sinks, sink_url, 2)
        load = Load(f.api, "rolling")
        restarts: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await anyio.sleep(1)
            from tests.multinode import migrate

            await anyio.to_thread.run_sync(migrate, f.database_url, tmp_path / "migrate.log")
            for node in f.nodes:
                with elapsed() as took:
                    await node.stop()
                    await node.start()
                restarts.append(round(took(), 2))
                await anyio.sleep(1)
            load.stopping.set()
        await all_done(f, load.acknowledged, within=60)
        expected = await f.expected_pairs(paths)
        succeeded_events = await f.value("SELECT count(*) FROM events WHERE type = 'job.succeeded'")
        await f.never_polled()
    delivered, duplicates, lost = sinks.tally(expected)
    ledger = Ledger(
        "rolling restart across a migration",
        sent=load.sent,
        acknowledged=len(load.acknowledged),
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={"retried": dict(load.retries), "restart_s": restarts, "schema": versions[-1]},
    )
    ledger.publish(ledgers)
    assert versions == list(range(1, newest + 1))
    assert ledger.balanced and ledger.acknowledged == ledger.sent, ledger
    assert succeeded_events == len(load.acknowledged)


# --- 9. PostgreSQL restarted under load -----------------------------------------------------------


async def test_postgresql_restarted_under_load_loses_nothing_acknowledged(
    tmp_path: Path, moto: str, ledgers: Path
) -> None:
    """A PostgreSQL of this test's own is restarted (pg_ctl restart -m fast) while jobs arrive
    through Caddy and deliveries go out: the nodes reconnect and become ready again; every job
    acknowledged (202) is stored, every provider callback acknowledged (2xx) is applied, and
    every delivery of every stored event arrives. A callback refused while the database was
    down (5xx: nothing stored) is the provider's to retry; the simulator does not, so those
    jobs wait for their deadline, still ``submitted``, and are counted."""
    sinks = Sinks()
    with throwaway_cluster() as cluster:
        url = cluster.create_database("restarted")
        async with served_sinks(sinks) as sink_url, fleet(tmp_path, url, moto) as f:
            paths = await f.subscribe(sinks, sink_url, 2)
            load = Load(f.api, "pg restart")
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await anyio.sleep(2)
                acknowledged_before = len(load.acknowledged)
                await anyio.to_thread.run_sync(restart, cluster)
                await anyio.sleep(3)
                load.stopping.set()
            for node in f.nodes:
                await node.ready(within=30)
            providers_ids: dict[str, str | None] = {}
            terminal: dict[str, int | None] = {}

            async def every_result_sent() -> bool:
                """Every acknowledged job reached the provider (a submit refused during the
                restart is retried) and the provider sent its result."""
                rows = await f.sql(
                    "SELECT id, provider_job_id FROM jobs WHERE id = ANY($1::text[])",
                    load.acknowledged,
                )
                providers_ids.update({row[0]: row[1] for row in rows})
                async with httpx.AsyncClient(trust_env=False) as http:
                    log = (await http.get(f"{f.sim}/_sim/stats")).json()["callbacks"]
                terminal.update({c["job_id"]: c["status"] for c in log if c["kind"] == "terminal"})
                return set(providers_ids.values()) <= set(terminal)

            try:
                await eventually(every_result_sent, 60, "the simulator sent every result")
            except pytest.fail.Exception:
                missing = {j: p for j, p in providers_ids.items() if p not in terminal}
                print(f"\nno result for {missing}\n{f.logs()}")
                raise
            assert set(providers_ids) == set(load.acknowledged), "an acknowledged job is missing"
            refused = [
                job
                for job, provider_id in providers_ids.items()
                if provider_id is None or not (terminal[provider_id] or 999) < 300
            ]
            answered = [job for job in load.acknowledged if job not in refused]
            await all_done(f, answered, within=60)
            left = await f.sql(
                "SELECT status, count(*) FROM jobs WHERE id = ANY($1::text[]) GROUP BY 1", refused
            )
            expected = await f.expected_pairs(paths)
            await f.never_polled()
    delivered, duplicates, lost = sinks.tally(expected)
    ledger = Ledger(
        "postgresql restarted under load",
        sent=load.sent,
        acknowledged=len(load.acknowledged),
        expected=len(expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=lost,
        detail={
            "acknowledged_before_restart": acknowledged_before,
            "retried": dict(load.retries),
            "results_refused_during_restart": len(refused),
            "those_jobs": {row[0]: row[1] for row in left},
        },
    )
    ledger.publish(ledgers)
    assert acknowledged_before > 0
    assert ledger.balanced and ledger.acknowledged == ledger.sent, ledger
    # A refused callback stored nothing (or was stored and only its answer lost): such a job is
    # still submitted, or succeeded; none is in any other state.
    assert {row[0] for row in left} <= {"submitted", "succeeded"}, left


def restart(cluster: Cluster) -> None:
    cluster.restart()
