"""``ordering: "fifo"``: one delivery in flight per subscription, in event order, each after the
previous one succeeded or ran out of retries; the order survives a restart; a failing head holds
back its own queue only (docs/ordered-delivery.md).

The storage tests drive the outbox with explicit times, so hours of failure take no time; the
service tests run the real dispatcher against loopback receivers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.core.models import DeliveryStatus
from service.storage import deliveries, events, subscriptions
from service.storage.database import Connection, Database
from service.storage.deliveries import AttemptOutcome, Claimed
from tests.conftest import SettingsFactory
from tests.servers import run_server
from tests.support import ADMIN_KEY, api_client, in_process, ping_event, subscription_row
from tests.test_console import sign_in

pytestmark = pytest.mark.anyio

HOUR = 3600.0
T0 = 1_790_000_000.0
HOOK = "https://hooks.example.test/x"


async def publish(conn: Connection, count: int, at: float, subs: list[str]) -> list[str]:
    """``count`` events, one transaction, each to every one of ``subs``; their ids in order."""
    batch = [
        ping_event(at, subs, type_="job.succeeded", payload=json.dumps({"n": n}).encode())
        for n in range(count)
    ]
    await events.append(conn, batch)
    return [event.id for event in batch]


async def claim(db: Database, now: float, busy: dict[str, int] | None = None) -> list[Claimed]:
    """A claim as the dispatcher makes one: what is due, sized by ``busy`` (8 each at most)."""
    busy = busy or {}
    ready = await deliveries.due_subscriptions(
        db.reader, skip=[sub for sub, n in busy.items() if n >= 8], now=now, cap=8, limit=100
    )
    rooms = deliveries.rooms_for(ready, busy, per_subscription=8, limit=100)
    async with db.transaction() as conn:
        return await deliveries.claim_due(conn, now=now, lease_until=now + 60, rooms=rooms)


async def finish(db: Database, delivery: Claimed, at: float, status: str, **more: Any) -> None:
    """Record one attempt of ``delivery`` with the outcome ``status``."""
    outcome = AttemptOutcome(
        delivery_id=delivery.id,
        subscription_id=delivery.subscription_id,
        attempted_at=at,
        latency_ms=1.0,
        status=DeliveryStatus(status),
        status_code=204 if status == "succeeded" else 500,
        token=delivery.token,
        **more,
    )
    async with db.transaction() as conn:
        await deliveries.record(conn, [outcome])


async def queued(db: Database, sub_id: str) -> int:
    return (await deliveries.queue_of(db.reader, sub_id)).queued


@pytest.fixture
async def db(db: Database) -> Database:
    """This pass's store (conftest's ``db``) with a FIFO subscription and a free one."""
    async with db.transaction() as conn:
        await subscriptions.insert(conn, subscription_row("sub_fifo", HOOK, at=T0, ordering="fifo"))
        await subscriptions.insert(conn, subscription_row("sub_free", HOOK, at=T0))
    return db


async def test_a_fifo_subscription_failing_for_hours_holds_only_its_own_queue(
    db: Database,
) -> None:
    async with db.transaction() as conn:
        first = await publish(conn, 200, T0, ["sub_fifo", "sub_free"])
    # The first claim: the FIFO head alone, and the other subscription's deliveries up to its cap.
    claimed = await claim(db, T0)
    fifo = [c for c in claimed if c.subscription_id == "sub_fifo"]
    assert [c.event_id for c in fifo] == [first[0]]
    assert sum(c.subscription_id == "sub_free" for c in claimed) == 8
    assert await queued(db, "sub_fifo") == 199

    # The head fails every hour for ten hours while events keep arriving.
    head = fifo[0]
    now = T0
    later: list[str] = []
    for hour in range(1, 11):
        await finish(db, head, now, "pending", next_attempt_at=now + HOUR)
        async with db.transaction() as conn:
            later += await publish(conn, 20, now, ["sub_fifo", "sub_free"])
        # Half an hour on: nothing of the FIFO subscription is due, however many wait; the other
        # subscription keeps being served, and nothing waiting makes the dispatcher spin.
        busy = {"sub_free": 0}
        claimed = await claim(db, now + HOUR / 2, busy)
        assert all(c.subscription_id == "sub_free" for c in claimed)
        for delivery in claimed:
            await finish(db, delivery, now + HOUR / 2, "succeeded")
        assert await queued(db, "sub_fifo") == 199 + 20 * hour
        now += HOUR
        claimed = await claim(db, now)
        fifo = [c for c in claimed if c.subscription_id == "sub_fifo"]
        assert [c.event_id for c in fifo] == [first[0]]  # the same head again, alone
        for delivery in claimed:
            if delivery.subscription_id == "sub_free":
                await finish(db, delivery, now, "succeeded")
        head = fifo[0]
    # Its retries run out: the next in line is due at once, and then each in event order.
    await finish(db, head, now, "failed")
    order = []
    while True:
        claimed = [c for c in await claim(db, now) if c.subscription_id == "sub_fifo"]
        if not claimed:
            break
        assert len(claimed) == 1
        order.append(claimed[0].event_id)
        await finish(db, claimed[0], now, "succeeded")
    assert order == first[1:] + later
    assert await queued(db, "sub_fifo") == 0


async def test_a_restart_keeps_the_order(db: Database) -> None:
    async with db.transaction() as conn:
        published = await publish(conn, 5, T0, ["sub_fifo"])
    [head] = await claim(db, T0)
    assert head.event_id == published[0]
    # The process dies with the head in flight; the next start releases its lease.
    async with db.transaction() as conn:
        assert await deliveries.release(conn, None, T0 + 10) == 1
        await deliveries.restart_queues(conn, T0 + 10)
    order = []
    for step in range(5):
        claimed = await claim(db, T0 + 10 + step)
        assert len(claimed) == 1
        order.append(claimed[0].event_id)
        await finish(db, claimed[0], T0 + 10 + step, "succeeded")
    assert order == published


async def test_restart_promotes_a_queue_left_without_a_head(db: Database) -> None:
    async with db.transaction() as conn:
        published = await publish(conn, 3, T0, ["sub_fifo"])
        # A head canceled by hand in the database leaves its queue with nothing due.
        await conn.execute(
            "UPDATE deliveries SET status = 'canceled' WHERE event_id = ?", (published[0],)
        )
    assert await claim(db, T0) == []
    async with db.transaction() as conn:
        assert await deliveries.restart_queues(conn, T0) == 1
    [next_one] = await claim(db, T0)
    assert next_one.event_id == published[1]


async def test_turning_fifo_off_releases_the_queue(db: Database) -> None:
    async with db.transaction() as conn:
        await publish(conn, 4, T0, ["sub_fifo"])
        assert await deliveries.release_queue(conn, "sub_fifo", T0) == 3
        await conn.execute("UPDATE subscriptions SET ordering = 'none' WHERE id = 'sub_fifo'")
    assert len(await claim(db, T0)) == 4


# --- through the service -------------------------------------------------------------------------


@dataclass
class OneAtATime:
    """A receiver that takes a while per request, records the order and the most requests it
    had at once. ``fail[n]`` is how many times to fail the n-th distinct event to arrive (0 is
    the first), so the plan holds however soon the first one arrives."""

    fail: dict[int, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    now: int = 0
    most: int = 0
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                event_id = request.headers["webhook-id"]
                self.seen.append(event_id)
                if event_id not in self.order:
                    self.order.append(event_id)
                position = self.order.index(event_id)
                await anyio.sleep(0.03)
                if self.fail.get(position, 0) > 0:
                    self.fail[position] -= 1
                    return Response(status_code=503)
                self.accepted.append(event_id)
                return Response(status_code=204)
            finally:
                self.now -= 1
                self.arrived.set()
                self.arrived = anyio.Event()

        return Starlette(routes=[Route("/", receive, methods=["POST"])])

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(20):
            while len(self.accepted) < count:
                await self.arrived.wait()


async def ping_many(http: httpx.AsyncClient, sub_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = await http.post(f"/v1/subscriptions/{sub_id}/test")
        assert response.status_code == 202, response.text
        ids.append(response.json()["event_id"])
    return ids


async def test_fifo_delivers_one_at_a_time_in_order_and_waits_for_a_failing_head(
    settings_factory: SettingsFactory,
) -> None:
    receiver = OneAtATime()
    settings = settings_factory(RETRY_SCHEDULE="0,0.2,0.2,0.2", SUBSCRIPTION_CONCURRENCY="4")
    async with run_server(receiver.app()) as url, api_client(settings) as http:
        created = await http.post("/v1/subscriptions", json={"url": url + "/", "ordering": "fifo"})
        assert created.status_code == 201, created.text
        sub = created.json()
        assert sub["ordering"] == "fifo"
        receiver.fail = {0: 2, 3: 1}  # the first fails twice, the fourth once
        published = await ping_many(http, sub["id"], 6)
        await receiver.wait_for(6)
    assert receiver.accepted == published
    assert receiver.seen == [published[0]] * 3 + published[1:3] + [published[3]] * 2 + published[4:]
    assert receiver.most == 1


async def test_an_exhausted_head_lets_the_rest_through(settings_factory: SettingsFactory) -> None:
    receiver = OneAtATime()
    settings = settings_factory(RETRY_SCHEDULE="0,0.1,0.1")
    async with run_server(receiver.app()) as url, api_client(settings) as http:
        sub = (
            await http.post("/v1/subscriptions", json={"url": url + "/", "ordering": "fifo"})
        ).json()
        receiver.fail = {0: 1000}
        published = await ping_many(http, sub["id"], 3)
        await receiver.wait_for(2)
        log = await http.get("/v1/deliveries", params={"subscription_id": sub["id"]})
        states = {d["event_id"]: d["status"] for d in log.json()["data"]}
    assert receiver.accepted == published[1:]
    assert receiver.seen == [published[0]] * 3 + published[1:]
    assert states[published[0]] == "failed"


async def test_the_console_shows_the_head_of_line(settings_factory: SettingsFactory) -> None:
    receiver = OneAtATime()
    settings = settings_factory(RETRY_SCHEDULE="0,3600")
    async with run_server(receiver.app()) as url, in_process(settings) as (http, app):
        sub = (
            await http.post("/v1/subscriptions", json={"url": url + "/", "ordering": "fifo"})
        ).json()
        receiver.fail = {0: 1}
        published = await ping_many(http, sub["id"], 4)
        with anyio.fail_after(10):
            while True:
                log = await http.get("/v1/deliveries", params={"event_id": published[0]})
                [head] = log.json()["data"]
                if head["attempt_count"] == 1 and head["status"] == "pending":
                    break
                await anyio.sleep(0.02)
        queued = await http.get(
            "/v1/deliveries", params={"subscription_id": sub["id"], "status": "queued"}
        )
        assert len(queued.json()["data"]) == 3
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://reelhook.test"
        ) as browser:
            signed = await sign_in(browser, ADMIN_KEY)
            assert signed.status_code == 303, signed.text
            page = await browser.get(f"/console/subscriptions/{sub['id']}")
    assert page.status_code == 200
    text = page.text
    assert "FIFO queue" in text and head["id"] in text
    assert '<dd id="fifo-queued">3</dd>' in text
    assert "head-of-line blocking" in text


async def test_turning_fifo_off_sends_the_queue_at_once(settings_factory: SettingsFactory) -> None:
    receiver = OneAtATime()
    settings = settings_factory(RETRY_SCHEDULE="0,3600")
    async with run_server(receiver.app()) as url, api_client(settings) as http:
        created = await http.post("/v1/subscriptions", json={"url": url + "/", "ordering": "fifo"})
        sub = created.json()
        receiver.fail = {0: 1000}  # the head is stuck for an hour
        published = await ping_many(http, sub["id"], 4)
        with anyio.fail_after(10):
            while not receiver.seen:
                await receiver.arrived.wait()
        assert receiver.accepted == []
        changed = await http.patch(f"/v1/subscriptions/{sub['id']}", json={"ordering": "none"})
        assert changed.status_code == 200 and changed.json()["ordering"] == "none"
        await receiver.wait_for(3)  # the three behind the head, without waiting for it
    assert sorted(receiver.accepted) == sorted(published[1:])
