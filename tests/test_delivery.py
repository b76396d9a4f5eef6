"""Fan-out (docs/contract.md §5) over real loopback HTTP: an in-process reelhook and uvicorn
subscribers.

Most tests create a subscription and ``POST /v1/subscriptions/{id}/test`` to enqueue a ``ping``,
which runs the real outbox and dispatcher without needing jobs. These tests read delivery state
straight from the service's SQLite file (read-only), which also shows columns the API does not;
tests/test_delivery_api.py covers the delivery-log API itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.app.settings import Settings
from service.core.models import JOB_EVENT_TYPES, Subscription
from service.delivery import signing
from tests.conftest import SettingsFactory
from tests.helpers.delivery import (
    JOB,
    Hanging,
    attempts_of,
    delivery_of,
    ping,
    query,
    sink_and_service,
    subscribe,
    subscribe_as,
)
from tests.helpers.keys import KEY_B, KEY_C, add_member_keys, as_key
from tests.servers import Sink, loopback_socket, read_body, run_lifespan, run_server, url_of
from tests.support import FakeClock, api_client, assert_error

pytestmark = pytest.mark.anyio

Script = Callable[[int], tuple[int, dict[str, str]]]


# --- helpers -----------------------------------------------------------------------------------


async def settled(
    settings: Settings,
    event_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 10.0,
) -> dict[str, Any]:
    """Poll the delivery row of ``event_id`` until ``predicate`` holds; fail after ``within`` s."""
    with anyio.fail_after(within):
        while True:
            row = await delivery_of(settings, event_id)
            if predicate(row):
                return row
            await anyio.sleep(0.02)


def status_is(*statuses: str) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["status"] in statuses


def first_then(first: tuple[int, dict[str, str]], then: int = 204) -> Script:
    return lambda count: first if count == 1 else (then, {})


# --- signing and headers -----------------------------------------------------------------------


async def test_a_ping_is_signed_per_standard_webhooks(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        before = int(time.time())
        event_id = await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) >= 1)
        logged = (await http.get("/v1/events", params={"type": "ping"})).json()["data"]
    (delivery,) = sink.on("/hook")
    event = Webhook(sub["secret"]).verify(delivery.body, delivery.headers)
    assert event["type"] == "ping"
    assert event["data"] == {"subscription_id": sub["id"]}
    assert delivery.headers["webhook-id"] == event_id
    assert before - 1 <= int(delivery.headers["webhook-timestamp"]) <= int(time.time()) + 1
    assert delivery.headers["webhook-signature"].startswith("v1,")
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["user-agent"].startswith("reelhook/")
    assert [e["id"] for e in logged] == [event_id]
    assert json.loads(delivery.body) == {k: v for k, v in logged[0].items() if k != "id"}

    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(delivery.body, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(sub["secret"]).verify(delivery.body + b" ", delivery.headers)


async def test_static_subscription_headers_arrive(settings_factory: SettingsFactory) -> None:
    headers = {"Authorization": "Bearer n8n-token", "X-Team": "video"}
    async with sink_and_service(settings_factory()) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook", headers=headers)
        assert sub["headers"] == {"Authorization": "********", "X-Team": "********"}
        await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) >= 1)
    (delivery,) = sink.on("/hook")
    assert delivery.headers["authorization"] == "Bearer n8n-token"
    assert delivery.headers["x-team"] == "video"
    Webhook(sub["secret"]).verify(delivery.body, delivery.headers)


# --- success, failure and retries --------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_any_2xx_is_delivered_in_one_attempt(
    settings_factory: SettingsFactory, status: int
) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (status, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
        attempts = await attempts_of(settings, event_id)
    assert row["status"] == "succeeded"
    assert row["attempts"] == 1
    assert row["last_status_code"] == status
    assert [a["status_code"] for a in attempts] == [status]
    assert len(sink.on("/hook")) == 1


async def test_a_500_then_2xx_is_delivered_on_the_second_attempt(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = first_then((500, {}))
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
        attempts = await attempts_of(settings, event_id)
    assert row["status"] == "succeeded"
    assert row["attempts"] == 2
    assert [a["status_code"] for a in attempts] == [500, 204]
    assert attempts[0]["error"] == "HTTP 500"
    first, second = sink.on("/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
    assert first.body == second.body
    for delivery in (first, second):
        Webhook(sub["secret"]).verify(delivery.body, delivery.headers)


@pytest.mark.parametrize("status", [400, 401, 404, 422, 301, 304])
async def test_anything_but_2xx_is_retried(settings_factory: SettingsFactory, status: int) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = first_then((status, {}))
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
    assert row["status"] == "succeeded"
    assert row["attempts"] == 2
    assert len(sink.on("/hook")) == 2


async def test_an_always_failing_subscriber_gets_exactly_the_scheduled_attempts(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    assert len(settings.retry_schedule) == 3
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (500, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
        attempts = await attempts_of(settings, event_id)
        # Still there and still active: exhausting one delivery does not touch the subscription.
        still = await http.get(f"/v1/subscriptions/{sub['id']}")
    assert row["status"] == "failed"
    assert row["attempts"] == 3
    assert row["next_attempt_at"] is None
    assert row["last_status_code"] == 500
    assert [a["status_code"] for a in attempts] == [500, 500, 500]
    assert len(sink.on("/hook")) == 3
    assert {d.headers["webhook-id"] for d in sink.on("/hook")} == {event_id}
    assert still.status_code == 200 and still.json()["status"] == "active"


async def test_410_gone_deletes_the_subscription_and_is_not_retried(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/gone"] = lambda count: (410, {})
        gone = await subscribe(http, f"{sink_url}/gone")
        other = await subscribe(http, f"{sink_url}/other")
        event_id = await ping(http, gone["id"])
        # The outcome and the deletion are recorded in one transaction.
        row = await settled(settings, event_id, status_is("succeeded", "failed", "canceled"))
        fetched = await http.get(f"/v1/subscriptions/{gone['id']}")
        again = await http.post(f"/v1/subscriptions/{gone['id']}/test")
        listed = [s["id"] for s in (await http.get("/v1/subscriptions")).json()["data"]]
        # The dispatcher carries on for everyone else.
        await ping(http, other["id"])
        await sink.wait_for(lambda s: len(s.on("/other")) >= 1)
    assert fetched.status_code == 404
    assert row["status"] == "failed"
    assert row["attempts"] == 1
    assert row["last_status_code"] == 410
    assert row["next_attempt_at"] is None
    assert len(sink.on("/gone")) == 1
    assert again.status_code == 404
    assert listed == [other["id"]]


async def test_429_with_retry_after_zero_is_retried(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(RETRY_OVERLOAD_FLOOR="0")
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = first_then((429, {"Retry-After": "0"}))
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
        attempts = await attempts_of(settings, event_id)
    assert row["status"] == "succeeded"
    assert [a["status_code"] for a in attempts] == [429, 204]
    assert len(sink.on("/hook")) == 2


async def test_429_waits_at_least_the_overload_floor(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (429, {"Retry-After": "0"})
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await settled(settings, event_id, lambda r: r["last_status_code"] == 429)
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    # updated_at is the attempt time; the schedule alone would retry 0.2 s later.
    assert row["next_attempt_at"] - row["updated_at"] >= 60.0 - 0.01
    assert len(sink.on("/hook")) == 1


async def test_retry_after_lengthens_the_wait_up_to_the_longest_scheduled_delay(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(RETRY_SCHEDULE="0,0.2,300")
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (503, {"Retry-After": "100"})
        sink.script["/long"] = lambda count: (503, {"Retry-After": "86400"})
        sub = await subscribe(http, f"{sink_url}/hook")
        long = await subscribe(http, f"{sink_url}/long")
        event_id = await ping(http, sub["id"])
        long_id = await ping(http, long["id"])
        row = await settled(settings, event_id, lambda r: r["last_status_code"] == 503)
        long_row = await settled(settings, long_id, lambda r: r["last_status_code"] == 503)
    assert row["status"] == long_row["status"] == "pending"
    assert row["next_attempt_at"] - row["updated_at"] == pytest.approx(100.0, abs=0.01)
    assert long_row["next_attempt_at"] - long_row["updated_at"] == pytest.approx(300.0, abs=0.01)


async def test_a_redirect_is_a_failure_and_is_not_followed(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = first_then((302, {"Location": f"{sink_url}/elsewhere"}))
        sink.script["/hook-307"] = first_then((307, {"Location": f"{sink_url}/elsewhere"}))
        sub = await subscribe(http, f"{sink_url}/hook")
        sub_307 = await subscribe(http, f"{sink_url}/hook-307")
        event_id = await ping(http, sub["id"])
        event_307 = await ping(http, sub_307["id"])
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
        row_307 = await settled(settings, event_307, status_is("succeeded", "failed"))
        attempts = await attempts_of(settings, event_id)
    assert sink.on("/elsewhere") == []
    assert row["status"] == row_307["status"] == "succeeded"
    assert row["attempts"] == row_307["attempts"] == 2
    assert [a["status_code"] for a in attempts] == [302, 204]
    assert attempts[0]["error"] == "HTTP 302"
    assert len(sink.on("/hook")) == len(sink.on("/hook-307")) == 2


async def test_connection_refused_is_retried_and_others_still_get_theirs(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    with closing(loopback_socket()) as nobody:  # bound, never listening: connections are refused
        host_port = url_of(nobody).removeprefix("http://")
        async with sink_and_service(settings) as (sink, sink_url, http):
            dead = await subscribe(http, f"{url_of(nobody)}/hook")
            alive = await subscribe(http, f"{sink_url}/hook")
            dead_event = await ping(http, dead["id"])
            await ping(http, alive["id"])
            await sink.wait_for(lambda s: len(s.on("/hook")) >= 1)
            row = await settled(settings, dead_event, status_is("succeeded", "failed"))
            attempts = await attempts_of(settings, dead_event)
            # The dispatcher survived three connection errors and keeps delivering.
            await ping(http, alive["id"])
            await sink.wait_for(lambda s: len(s.on("/hook")) >= 2)
    assert row["status"] == "failed"
    assert row["attempts"] == 3
    assert row["last_status_code"] is None
    assert len(attempts) == 3
    assert all(a["status_code"] is None and a["error"] for a in attempts)
    # In words, not the HTTP client's exception text.
    assert attempts[0]["error"] == f"could not connect to {host_port} (Connection refused)"


@dataclass
class RawReplies:
    """A subscriber written as a bare ASGI app, so it can send header bytes Starlette would not.

    ``/odd`` answers its first request 503 with ``Retry-After: ²`` (UTF-8 superscript two, which
    ``str.isdigit`` accepts and ``float`` does not); every other request is a 204.
    """

    arrivals: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        assert scope["type"] == "http"
        await read_body(receive)
        path: str = scope["path"]
        self.arrivals.append(path)
        self.changed.set()
        self.changed = anyio.Event()
        headers = [(b"content-length", b"0")]
        status = 204
        if path == "/odd" and self.arrivals.count(path) == 1:
            status = 503
            headers.append((b"retry-after", b"\xc2\xb2"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, predicate: Callable[[RawReplies], bool], within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not predicate(self):
                await self.changed.wait()


async def test_an_unreadable_retry_after_is_ignored_and_the_dispatcher_carries_on(
    settings_factory: SettingsFactory,
) -> None:
    """A subscriber's ``Retry-After: ²`` once stopped the dispatcher and the lifespan with it.
    Now the 503 is an ordinary failed attempt retried on schedule, later deliveries still go out,
    and the service stays healthy."""
    settings = settings_factory()
    subscriber = RawReplies()
    async with run_server(subscriber) as url, api_client(settings) as http:
        odd = await subscribe(http, f"{url}/odd")
        other = await subscribe(http, f"{url}/other")
        odd_event = await ping(http, odd["id"])
        await settled(settings, odd_event, lambda r: r["last_status_code"] is not None)
        # The 503 has been judged and recorded; the dispatcher still claims and sends.
        await ping(http, other["id"])
        await subscriber.wait_for(lambda s: s.arrivals.count("/other") == 1)
        row = await settled(settings, odd_event, status_is("succeeded", "failed"))
        attempts = await attempts_of(settings, odd_event)
        health = await http.get("/healthz")
    assert [a["status_code"] for a in attempts] == [503, 204], attempts
    assert attempts[0]["error"] == "HTTP 503"
    assert row["status"] == "succeeded"
    assert row["attempts"] == 2
    assert subscriber.arrivals.count("/odd") == 2
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "dispatcher": "running"}


async def test_the_first_attempt_waits_for_the_first_scheduled_delay(
    settings_factory: SettingsFactory,
) -> None:
    """``REELHOOK_RETRY_SCHEDULE[0]`` is the delay before the first attempt: a ping is queued 5 s
    out and sent only once the clock has passed that point."""
    settings = settings_factory(RETRY_SCHEDULE="5,0.2")
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        first = await subscribe(http, f"{sink_url}/first")
        second = await subscribe(http, f"{sink_url}/second")
        first_event = await ping(http, first["id"])
        queued = await delivery_of(settings, first_event)
        attempts_before = await attempts_of(settings, first_event)
        # Past the first ping's due time; the second ping's commit wakes the dispatcher.
        clock.offset = 5.1
        second_event = await ping(http, second["id"])
        await sink.wait_for(lambda s: len(s.on("/first")) == 1)
        sent = await settled(settings, first_event, status_is("succeeded"))
        not_yet = await delivery_of(settings, second_event)
    assert queued["status"] == "pending"
    assert queued["attempts"] == 0
    assert queued["next_attempt_at"] == pytest.approx(queued["created_at"] + 5.0, abs=0.01)
    assert attempts_before == []
    assert sent["attempts"] == 1
    # The dispatcher ran after the second ping was queued and left it alone: it is not due yet.
    assert not_yet["status"] == "pending" and not_yet["attempts"] == 0, not_yet
    assert not_yet["next_attempt_at"] == pytest.approx(not_yet["created_at"] + 5.0, abs=0.01)
    assert sink.on("/second") == []


async def test_a_timeout_is_retried(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(DELIVERY_TIMEOUT="0.3", RETRY_OVERLOAD_FLOOR="0")
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with api_client(settings) as http:
                sub = await subscribe(http, f"{url}/hang-once")
                event_id = await ping(http, sub["id"])
                row = await settled(settings, event_id, status_is("succeeded", "failed"))
                attempts = await attempts_of(settings, event_id)
        finally:
            hanging.release.set()
    assert row["status"] == "succeeded"
    assert row["attempts"] == 2
    assert attempts[0]["status_code"] is None
    assert attempts[0]["error"] == "timed out"
    assert attempts[1]["status_code"] == 204
    assert hanging.on("/hang-once") == 2


async def test_a_timeout_waits_at_least_the_overload_floor(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(DELIVERY_TIMEOUT="0.3")
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with api_client(settings) as http:
                sub = await subscribe(http, f"{url}/hang")
                event_id = await ping(http, sub["id"])
                row = await settled(settings, event_id, lambda r: r["last_error"] is not None)
        finally:
            hanging.release.set()
    assert row["status"] == "pending"
    assert row["last_error"] == "timed out"
    assert row["next_attempt_at"] - row["updated_at"] >= 60.0 - 0.01


async def test_a_slow_subscriber_does_not_hold_up_a_fast_one(
    settings_factory: SettingsFactory,
) -> None:
    """With two slots per subscription and three overall, four pings to a hanging subscriber
    take two slots; the fast subscriber's ping still goes out while they hang."""
    settings = settings_factory(SUBSCRIPTION_CONCURRENCY="2", DELIVERY_CONCURRENCY="3")
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with api_client(settings) as http:
                slow = await subscribe(http, f"{url}/hang")
                fast = await subscribe(http, f"{url}/fast")
                slow_events = [await ping(http, slow["id"]) for _ in range(4)]
                await hanging.wait_for(lambda h: h.hanging == 2)
                await ping(http, fast["id"])
                await hanging.wait_for(lambda h: h.on("/fast") == 1)
                # The fast ping went out while both slow requests were still hanging.
                assert hanging.hanging == 2
                assert hanging.on("/hang") == 2
                hanging.release.set()
                for event_id in slow_events:
                    await settled(settings, event_id, status_is("succeeded", "failed"))
        finally:
            hanging.release.set()
    assert hanging.on("/hang") == 4


async def test_the_per_subscription_cap_counts_deliveries_already_in_flight(
    settings_factory: SettingsFactory,
) -> None:
    """Two retries of a subscription fall due together while one of its deliveries is in flight;
    with a cap of two, both are claimed ahead (prefetch) but exactly one of them is sent, so
    exactly two reach the subscriber at once, and the other waits until a slot frees up."""
    settings = settings_factory(SUBSCRIPTION_CONCURRENCY="2", RETRY_SCHEDULE="0,10,10")
    clock = FakeClock()
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with api_client(settings, clock=clock) as http:
                # Two pings whose first attempts fail at once (500), to be retried 8-12 s later.
                flaky = await subscribe(http, f"{url}/big/10")
                first = [await ping(http, flaky["id"]) for _ in range(2)]
                for event_id in first:
                    await settled(settings, event_id, lambda r: r["last_status_code"] == 500)
                # Point the subscription at the hanging path and put one delivery in flight.
                patched = await http.patch(
                    f"/v1/subscriptions/{flaky['id']}", json={"url": f"{url}/hang"}
                )
                assert patched.status_code == 200, patched.text
                third = await ping(http, flaky["id"])
                await hanging.wait_for(lambda h: h.hanging == 1)
                # Both retries are now due (leases of 35 s are not); a ping elsewhere wakes the
                # dispatcher, which claims everything due in one go.
                clock.offset = 13.0
                other = await subscribe(http, f"{url}/fast")
                await settled(settings, await ping(http, other["id"]), status_is("succeeded"))
                # The one retry claimed alongside it reaches the subscriber and hangs too.
                await hanging.wait_for(lambda h: h.hanging == 2)
                inflight = await query(
                    settings,
                    "SELECT event_id FROM deliveries WHERE subscription_id = ? "
                    "AND status = 'inflight'",
                    flaky["id"],
                )
                # Waking the dispatcher again changes nothing while both slots are taken.
                await settled(settings, await ping(http, other["id"]), status_is("succeeded"))
                still_hanging = (hanging.hanging, hanging.on("/hang"))
                # Freeing the slots lets the waiting retry go out; all three end delivered.
                hanging.release.set()
                rows = [
                    await settled(settings, event_id, status_is("succeeded", "failed"))
                    for event_id in [*first, third]
                ]
        finally:
            hanging.release.set()
    if settings.uses_postgresql:
        # Several nodes share PostgreSQL: there the cap bounds the claims themselves, counted
        # across all nodes, so only the two being sent are claimed (docs/scaling.md).
        assert len(inflight) == 2 and third in {row["event_id"] for row in inflight}
    else:
        # All three are claimed (leased), but only two were ever sent at once.
        assert {row["event_id"] for row in inflight} == {*first, third}
    assert still_hanging == (2, 2)
    assert [row["status"] for row in rows] == ["succeeded"] * 3
    assert hanging.on("/hang") == 3  # the third ping once, and each retry once


async def test_an_error_body_is_stored_whole_up_to_20_kb(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    hanging = Hanging()
    async with run_server(hanging.app()) as url, api_client(settings) as http:
        small = await subscribe(http, f"{url}/big/15000")
        large = await subscribe(http, f"{url}/big/50000")
        small_event = await ping(http, small["id"])
        large_event = await ping(http, large["id"])
        await settled(settings, small_event, lambda r: r["last_error"] is not None)
        await settled(settings, large_event, lambda r: r["last_error"] is not None)
        small_body = (await attempts_of(settings, small_event))[0]["response_body"]
        large_body = (await attempts_of(settings, large_event))[0]["response_body"]
    assert small_body == b"a" * 7500 + b"b" * 7500
    assert len(large_body) == 20_000
    assert large_body == b"a" * 20_000


# --- disabled subscriptions, filters -----------------------------------------------------------


async def test_a_disabled_subscription_refuses_a_test_ping(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        patched = await http.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "disabled"})
        assert patched.status_code == 200, patched.text
        refused = await http.post(f"/v1/subscriptions/{sub['id']}/test")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "conflict"
    assert sink.received == []


async def test_retries_wait_while_a_subscription_is_disabled_and_resume_when_enabled(
    settings_factory: SettingsFactory,
) -> None:
    """A retry that falls due while its subscription is disabled is held, not sent; enabling the
    subscription releases it. "Not sent" is shown causally: a later ping to another subscription,
    claimed after the retry was due, arrives first."""
    settings = settings_factory(RETRY_SCHEDULE="0,1,1")
    clock = FakeClock()
    sink = Sink(script={"/flaky": lambda n: (500, {}) if n == 1 else (204, {})})
    async with run_server(sink.app()) as sink_url, api_client(settings, clock=clock) as http:
        flaky = await subscribe(http, f"{sink_url}/flaky")
        other = await subscribe(http, f"{sink_url}/other")
        event_id = await ping(http, flaky["id"])
        await settled(
            settings, event_id, lambda row: row["attempts"] == 1 and row["status"] == "pending"
        )
        patched = await http.patch(f"/v1/subscriptions/{flaky['id']}", json={"status": "disabled"})
        assert patched.status_code == 200, patched.text
        clock.offset = 60.0  # the retry is now long overdue
        await ping(http, other["id"])
        await sink.wait_for(lambda s: len(s.on("/other")) == 1)
        assert len(sink.on("/flaky")) == 1
        held = await delivery_of(settings, event_id)
        assert held["status"] == "pending" and held["attempts"] == 1

        enabled = await http.patch(f"/v1/subscriptions/{flaky['id']}", json={"status": "active"})
        assert enabled.status_code == 200, enabled.text
        await sink.wait_for(lambda s: len(s.on("/flaky")) == 2)
        row = await settled(settings, event_id, status_is("succeeded", "failed"))
    assert row["status"] == "succeeded"
    assert row["attempts"] == 2
    first, second = sink.on("/flaky")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id


def subscription(**changes: Any) -> Subscription:
    fields: dict[str, Any] = {
        "id": "sub_test",
        "owner_key_id": "key_test",
        "url": "https://example.com/hook",
        "secret": signing.new_secret(),
        "event_types": (),
        "models": (),
        "headers": {},
        "description": "",
        "status": "active",
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    fields.update(changes)
    return Subscription(**fields)


def test_an_empty_event_filter_means_every_job_event_but_not_pings() -> None:
    sub = subscription()
    for event_type in JOB_EVENT_TYPES:
        assert sub.matches(event_type, "trinetra/kling-v3", "job_1")
    assert sub.matches("subscription.disabled", None, None)
    assert not sub.matches("ping", None, None)


def test_an_event_filter_admits_only_the_listed_types() -> None:
    sub = subscription(event_types=("job.succeeded",))
    assert sub.matches("job.succeeded", "trinetra/kling-v3", "job_1")
    for event_type in ("job.submitted", "job.running", "job.failed", "subscription.disabled"):
        assert not sub.matches(event_type, "trinetra/kling-v3", "job_1")
    assert subscription(event_types=("ping",)).matches("ping", None, None)


def test_a_model_filter_admits_only_the_listed_models() -> None:
    sub = subscription(models=("trinetra/kling-v3",))
    assert sub.matches("job.succeeded", "trinetra/kling-v3", "job_1")
    assert not sub.matches("job.succeeded", "segmind/kling-2.5-turbo", "job_1")
    # Events about no job at all are not filtered by model.
    assert sub.matches("subscription.disabled", None, None)


def test_a_disabled_subscription_matches_nothing() -> None:
    sub = subscription(status="disabled")
    for event_type in (*JOB_EVENT_TYPES, "subscription.disabled", "ping"):
        assert not sub.matches(event_type, "trinetra/kling-v3", "job_1")


def test_a_one_off_callback_subscription_matches_only_its_job() -> None:
    sub = subscription(job_id="job_1", event_types=JOB_EVENT_TYPES)
    assert sub.matches("job.succeeded", "trinetra/kling-v3", "job_1")
    assert not sub.matches("job.succeeded", "trinetra/kling-v3", "job_2")
    assert not sub.matches("subscription.disabled", None, None)


# --- who hears of a job: owner-scoped fan-out ----------------------------------------------------


async def test_a_job_event_reaches_its_owners_and_admin_subscriptions_only(
    settings_factory: SettingsFactory,
) -> None:
    """Key B's job fails at once (its provider, the in-process simulator, is unreachable). B's
    subscription and the admin's hear ``job.failed``; key C's hears nothing of it: C's path
    receives only the ping C sends it afterwards, and C cannot see the job at all."""
    with closing(loopback_socket()) as nobody:  # bound, never listening: the submit is refused
        settings = settings_factory(PUBLIC_URL=url_of(nobody), SUBMIT_RETRY_SCHEDULE="0")
        await add_member_keys(settings, KEY_B, KEY_C)
        async with sink_and_service(settings) as (sink, sink_url, http):
            sub_b = await subscribe_as(http, KEY_B, f"{sink_url}/b")
            sub_c = await subscribe_as(http, KEY_C, f"{sink_url}/c")
            sub_admin = await subscribe(http, f"{sink_url}/admin")
            refused = await http.post("/v1/jobs", json=JOB, headers=as_key(KEY_B))
            assert refused.status_code == 202, refused.text
            job_id = refused.json()["id"]
            await sink.wait_for(lambda s: len(s.on("/b")) == 1 and len(s.on("/admin")) == 1)

            pinged = await http.post(f"/v1/subscriptions/{sub_c['id']}/test", headers=as_key(KEY_C))
            assert pinged.status_code == 202, pinged.text
            await sink.wait_for(lambda s: len(s.on("/c")) == 1)
            queued_for_c = await query(
                settings,
                "SELECT e.type FROM deliveries d JOIN events e ON d.event_id = e.id "
                "WHERE d.subscription_id = ?",
                sub_c["id"],
            )

            listed_by_c = await http.get("/v1/jobs", headers=as_key(KEY_C))
            fetched_by_c = await http.get(f"/v1/jobs/{job_id}", headers=as_key(KEY_C))
            log_of_c = await http.get("/v1/events", headers=as_key(KEY_C))
            listed_by_b = await http.get("/v1/jobs", headers=as_key(KEY_B))
            fetched_by_b = await http.get(f"/v1/jobs/{job_id}", headers=as_key(KEY_B))

    for path, sub in (("/b", sub_b), ("/admin", sub_admin)):
        (delivery,) = sink.on(path)
        event = Webhook(sub["secret"]).verify(delivery.body, delivery.headers)
        assert event["type"] == "job.failed", (path, event)
        assert event["data"]["id"] == job_id
    assert [d.json()["type"] for d in sink.on("/c")] == ["ping"]
    (ping_delivery,) = sink.on("/c")
    event = Webhook(sub_c["secret"]).verify(ping_delivery.body, ping_delivery.headers)
    assert event["type"] == "ping"
    assert event["data"] == {"subscription_id": sub_c["id"]}
    assert queued_for_c == [{"type": "ping"}]

    assert listed_by_c.status_code == 200, listed_by_c.text
    assert listed_by_c.json() == {"data": [], "next_cursor": None}
    assert_error(fetched_by_c, 404, "not_found")
    assert log_of_c.status_code == 200, log_of_c.text
    assert all(e["data"].get("id") != job_id for e in log_of_c.json()["data"])
    # B, the owner, sees its own job.
    assert [j["id"] for j in listed_by_b.json()["data"]] == [job_id]
    assert fetched_by_b.status_code == 200 and fetched_by_b.json()["status"] == "failed"


# --- signing against the Standard Webhooks reference library ------------------------------------


def test_signing_headers_verify_with_standardwebhooks() -> None:
    secret = signing.new_secret()
    body = b'{"type":"job.succeeded","data":{"id":"job_1","status":"succeeded"}}'
    now = int(time.time())
    headers = signing.headers([secret], "evt_1", now, body)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_signing_matches_the_reference_implementation() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = Webhook(secret).sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, UTC), body.decode()
    )
    assert signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    # The example from the Standard Webhooks specification.
    assert expected == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_two_secrets_give_two_signatures_that_each_verify() -> None:
    old, new, stranger = signing.new_secret(), signing.new_secret(), signing.new_secret()
    body = b'{"type":"ping","data":{}}'
    headers = signing.headers([old, new], "evt_2", int(time.time()), body)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    assert signatures[0] != signatures[1]
    assert Webhook(old).verify(body, headers) == json.loads(body)
    assert Webhook(new).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)


def test_a_signature_covers_id_timestamp_and_body() -> None:
    secret = signing.new_secret()
    body = b'{"type":"ping"}'
    now = int(time.time())
    headers = signing.headers([secret], "evt_3", now, body)
    for changed in (
        {**headers, "webhook-id": "evt_4"},
        {**headers, "webhook-timestamp": str(now - 1)},
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, changed)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"type":"pong"}', headers)


# --- callback_url: a one-off subscription per job ------------------------------------------------


def provider_app() -> Starlette:
    """Trinetra as far as submitting goes: ``/ok/...`` accepts the job, ``/broke/...`` is 402."""

    async def submit(request: Request) -> Response:
        body = await request.json()
        if request.url.path.startswith("/broke/"):
            return JSONResponse({"error": "insufficient credits"}, status_code=402)
        return JSONResponse({"job_id": f"trinetra-{body['external_task_id']}", "status": "queued"})

    return Starlette(routes=[Route("/{path:path}", submit, methods=["POST"])])


def trinetra_at(base_url: str) -> dict[str, str]:
    return {"TRINETRA_API_KEY": "key-trinetra", "TRINETRA_BASE_URL": base_url}


async def test_callback_url_events_are_signed_with_the_callback_secret(
    settings_factory: SettingsFactory,
) -> None:
    sink = Sink()
    async with run_server(provider_app()) as provider_url, run_server(sink.app()) as sink_url:
        settings = settings_factory(SIM_DELAY="60", **trinetra_at(f"{provider_url}/ok"))
        async with api_client(settings) as http:
            other = await http.post("/v1/jobs", json=JOB)
            assert other.status_code == 202, other.text
            assert "callback_secret" not in other.json()
            created = await http.post("/v1/jobs", json={**JOB, "callback_url": f"{sink_url}/job"})
            assert created.status_code == 202, created.text
            job = created.json()
            await sink.wait_for(lambda s: len(s.on("/job")) >= 1)
            listed = (await http.get("/v1/subscriptions")).json()["data"]
            to_other_job = await query(
                settings,
                "SELECT d.id FROM deliveries d JOIN events e ON d.event_id = e.id "
                "WHERE e.job_id = ?",
                other.json()["id"],
            )
    assert job["callback_secret"].startswith("whsec_")
    (delivery,) = sink.on("/job")
    event = Webhook(job["callback_secret"]).verify(delivery.body, delivery.headers)
    assert event["type"] == "job.submitted"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "submitted"
    assert "callback_secret" not in event["data"]
    assert listed == []  # the one-off subscription is not a listed subscription
    assert to_other_job == []  # and it hears nothing about other jobs


async def test_a_refused_jobs_failure_goes_to_callback_url_signed_with_the_secret_in_the_error(
    settings_factory: SettingsFactory,
) -> None:
    """The provider refuses the job outright: ``POST /v1/jobs`` answers 502 and the job fails.
    Its ``job.failed`` event goes to ``callback_url``, signed with the one-off subscription's
    secret, which the 502 is the only answer to carry."""
    sink = Sink()
    async with run_server(provider_app()) as provider_url, run_server(sink.app()) as sink_url:
        settings = settings_factory(SIM_DELAY="60", **trinetra_at(f"{provider_url}/broke"))
        async with api_client(settings) as http:
            response = await http.post("/v1/jobs", json={**JOB, "callback_url": f"{sink_url}/job"})
            assert response.status_code == 502, response.text
            body = response.json()
            job_id = body["error"]["details"]["job_id"]
            queued = await query(
                settings,
                "SELECT d.id FROM deliveries d JOIN events e ON d.event_id = e.id "
                "WHERE e.job_id = ? AND e.type = 'job.failed'",
                job_id,
            )
            await sink.wait_for(lambda s: len(s.on("/job")) >= 1)
            fetched = await http.get(f"/v1/jobs/{job_id}")
    assert len(queued) == 1, queued
    secret = body["error"]["details"]["callback_secret"]
    assert secret.startswith("whsec_")
    assert "callback_secret" not in fetched.json()
    (delivery,) = sink.on("/job")
    event = Webhook(secret).verify(delivery.body, delivery.headers)
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job_id
    assert event["data"]["status"] == "failed"
    assert event["data"]["error"]["kind"] == "insufficient_credits"
    assert "callback_secret" not in event["data"]


async def test_a_running_dispatcher_never_takes_over_its_own_expired_lease(
    settings_factory: SettingsFactory,
) -> None:
    """A claimed row whose lease runs out while its attempt is still under way (a slow
    subscriber, a long queue) is not claimed and sent a second time: only the next start
    takes leases back."""
    settings = settings_factory()
    clock = FakeClock()
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with api_client(settings, clock=clock) as http:
                slow = await subscribe(http, f"{url}/hang")
                event_id = await ping(http, slow["id"])
                await hanging.wait_for(lambda h: h.hanging == 1)
                # Far past any lease; another ping wakes the dispatcher, which claims what is due.
                clock.offset = 3600.0
                other = await subscribe(http, f"{url}/fast")
                await settled(settings, await ping(http, other["id"]), status_is("succeeded"))
                sent_while_held = hanging.on("/hang")
                hanging.release.set()
                row = await settled(settings, event_id, status_is("succeeded"))
        finally:
            hanging.release.set()
    assert sent_while_held == 1
    assert hanging.on("/hang") == 1
    assert row["attempts"] == 1
