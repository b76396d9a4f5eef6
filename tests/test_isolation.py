"""No tenant can hurt another: fair sharing of outbound capacity (hanging subscribers lose their
claim on the send pool) and per-key quotas on subscriptions and open event streams."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from service.delivery.fairness import Lanes
from tests.conftest import SettingsFactory, settings_for
from tests.helpers.delivery import ping, subscribe
from tests.helpers.keys import KEY_B, KEY_C, add_member_keys, as_key
from tests.servers import loopback_socket, read_body, run_lifespan, run_server, url_of
from tests.sse_client import Stream, open_stream
from tests.support import ADMIN_KEY, api_client, assert_error, in_process, served

pytestmark = pytest.mark.anyio


@dataclass
class Hangers:
    """A subscriber (bare ASGI, so it sees the client hang up): ``/hang/<n>`` requests never get
    an answer and count as open until reelhook gives up on them; ``/ok`` answers 204 at once and
    notes how many hanging requests were open when it arrived."""

    open: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    open_at_ok: list[int] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def _note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        await read_body(receive)
        path: str = scope["path"]
        if path.startswith("/hang/"):
            self.open[path] += 1
            self._note()
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            finally:
                self.open[path] -= 1
                self.ended[path] += 1
                self._note()
            return
        self.open_at_ok.append(sum(self.open.values()))
        self._note()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, predicate: Callable[[Hangers], bool], within: float = 20.0) -> None:
        with anyio.fail_after(within):
            while not predicate(self):
                await self.changed.wait()


async def test_hanging_subscribers_cannot_hold_the_send_pool(
    settings_factory: SettingsFactory,
) -> None:
    """Four hanging subscriptions with two slots each could hold all four send slots (as 32 x 8
    held all 256 in production). Once each has timed out (twice, so the attempts it started
    before its first timeout are over too), they share the one probation slot: every delivery
    of a healthy subscription then goes out while at most one hanging request is open."""
    settings = settings_factory(
        DELIVERY_CONCURRENCY="4",
        SUBSCRIPTION_CONCURRENCY="2",
        DELIVERY_TIMEOUT="0.5",
        RETRY_OVERLOAD_FLOOR="0",
        RETRY_SCHEDULE=",".join(["0"] + ["0.05"] * 40),
    )
    hangers = Hangers()
    paths = [f"/hang/{n}" for n in range(4)]
    async with run_server(hangers) as url, api_client(settings) as http:
        hanging = [await subscribe(http, f"{url}{path}") for path in paths]
        for sub in hanging:
            for _ in range(3):
                await ping(http, sub["id"])
        healthy = await subscribe(http, f"{url}/ok")
        await hangers.wait_for(lambda h: all(h.ended[path] >= 2 for path in paths))
        for count in range(1, 6):
            await ping(http, healthy["id"])
            await hangers.wait_for(_oks(count))
        # The hanging subscribers are still being tried, one at a time.
        ended = sum(hangers.ended.values())
        await hangers.wait_for(lambda h: sum(h.ended.values()) > ended)
    assert max(hangers.open_at_ok) <= 1, hangers.open_at_ok


def _oks(count: int) -> Callable[[Hangers], bool]:
    return lambda h: len(h.open_at_ok) == count


def test_a_lane_narrows_on_a_timeout_and_widens_on_success() -> None:
    lanes = Lanes(per_subscription=8, concurrency=16)
    assert lanes.width("sub_a") == 8 and not lanes.on_probation("sub_a")
    lanes.observe("sub_a", succeeded=False, timed_out=False)  # a quick 500 changes nothing
    assert lanes.width("sub_a") == 8
    lanes.observe("sub_a", succeeded=False, timed_out=True)
    assert lanes.width("sub_a") == 1 and lanes.on_probation("sub_a")
    assert lanes.on_probation_ids == ["sub_a"]
    widths = []
    for _ in range(4):
        lanes.observe("sub_a", succeeded=True, timed_out=False)
        widths.append(lanes.width("sub_a"))
    assert widths == [2, 4, 8, 8]
    assert not lanes.on_probation("sub_a") and lanes.on_probation_ids == []
    assert lanes.probation_slots == 4
    assert lanes.width("sub_b") == 8


async def test_a_narrowed_lane_lets_one_attempt_at_a_time_through() -> None:
    lanes = Lanes(per_subscription=2, concurrency=8)
    lanes.observe("sub_a", succeeded=False, timed_out=True)
    inside = 0
    most = 0
    gate = anyio.Event()

    async def attempt() -> None:
        nonlocal inside, most
        async with lanes.slot("sub_a"):
            inside += 1
            most = max(most, inside)
            await gate.wait()
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(attempt)
        await anyio.wait_all_tasks_blocked()
        assert inside == 1
        # A success widens the lane to two: a waiting attempt gets in at once.
        lanes.observe("sub_a", succeeded=True, timed_out=False)
        await anyio.wait_all_tasks_blocked()
        assert inside == 2
        gate.set()
    assert most == 2


async def test_a_key_has_at_most_its_quota_of_subscriptions(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(MAX_SUBSCRIPTIONS_PER_KEY="2")
    await add_member_keys(settings, KEY_B)
    async with api_client(settings) as http:
        first = await subscribe(http, "https://example.com/a")
        await subscribe(http, "https://example.com/b")
        refused = await http.post("/v1/subscriptions", json={"url": "https://example.com/c"})
        error = assert_error(refused, 429, "quota_exceeded")
        assert "REELHOOK_MAX_SUBSCRIPTIONS_PER_KEY" in error["message"]
        assert error["details"] == {"quota": "REELHOOK_MAX_SUBSCRIPTIONS_PER_KEY", "limit": 2}
        listed = (await http.get("/v1/subscriptions")).json()["data"]
        assert len(listed) == 2  # nothing stored half-way
        # Another key has its own quota.
        other = await http.post(
            "/v1/subscriptions", json={"url": "https://example.com/c"}, headers=as_key(KEY_B)
        )
        assert other.status_code == 201, other.text
        # Deleting one makes room again.
        assert (await http.delete(f"/v1/subscriptions/{first['id']}")).status_code == 204
        again = await http.post("/v1/subscriptions", json={"url": "https://example.com/c"})
        assert again.status_code == 201, again.text


async def test_a_key_has_at_most_its_quota_of_open_streams(
    settings_factory: SettingsFactory,
) -> None:
    with loopback_socket() as sock:
        settings = settings_factory(
            PUBLIC_URL=url_of(sock), STREAM_KEEPALIVE="60", MAX_STREAMS_PER_KEY="2"
        )
        await add_member_keys(settings, KEY_B)
        async with served(settings, sock) as http:
            async with open_stream(http) as one, open_stream(http) as two:
                await one.position()
                await two.position()
                refused = await http.get("/v1/events/stream")
                error = assert_error(refused, 429, "quota_exceeded")
                assert "REELHOOK_MAX_STREAMS_PER_KEY" in error["message"]
                assert error["details"]["limit"] == 2
                # Another key's streams are counted apart.
                async with open_stream(http, x_api_key=KEY_B) as other:
                    await other.position()
            # Closed streams give their places back (once the server has seen them go).
            with anyio.fail_after(10):
                while True:
                    try:
                        async with open_stream(http) as three, open_stream(http) as four:
                            await three.position()
                            await four.position()
                            break
                    except AssertionError:
                        await anyio.sleep(0.05)


async def test_after_another_keys_event_is_answered_as_an_unknown_one(
    settings_factory: SettingsFactory,
) -> None:
    """``after=`` naming another key's event gets the same 422 as an unknown id, on the page and
    on the stream, so a key cannot confirm that another's event exists."""
    settings = settings_factory()
    await add_member_keys(settings, KEY_B)
    async with api_client(settings) as http:
        sub = await subscribe(http, "https://example.com/hook")
        theirs = await ping(http, sub["id"])  # the admin's event, of no job of KEY_B's
        answers = {
            name: await http.get(path, params={"after": event_id}, headers=as_key(KEY_B))
            for name, event_id in (("theirs", theirs), ("unknown", "evt_unknown"))
            for path in ["/v1/events"]
        }
        stream = await http.get(
            "/v1/events/stream", params={"after": theirs}, headers=as_key(KEY_B)
        )
        own = await http.get("/v1/events", params={"after": theirs})
    bodies = {
        name: assert_error(answer, 422, "validation_failed", "after")
        for name, answer in answers.items()
    }
    assert bodies["theirs"]["message"].replace(theirs, "X") == bodies["unknown"]["message"].replace(
        "evt_unknown", "X"
    )
    assert_error(stream, 422, "validation_failed", "after")
    assert own.status_code == 200, own.text


_CSRF = re.compile(r'name="csrf" value="[^"]+"')


def _same_answer(theirs: httpx.Response, unknown: httpx.Response, names: dict[str, str]) -> None:
    """Two answers are the same but for the id asked about (``names``: their id -> unknown id)
    and, on console pages, the CSRF token each page is issued with."""
    texts = []
    for answer in (theirs, unknown):
        text = _CSRF.sub("", answer.text)
        for their_id, unknown_id in names.items():
            text = text.replace(their_id, unknown_id)
        texts.append((answer.status_code, answer.headers.get("content-type"), text))
    assert texts[0] == texts[1], theirs.request.url


async def test_another_keys_ids_are_answered_as_unknown_ones(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    """Every place a key can name an id: naming another key's job, subscription, delivery or
    event gets exactly the answer an id that does not exist gets, status and body, so probing
    cannot tell "not yours" from "not there"."""
    settings = settings_factory(PUBLIC_URL=dead_url, SUBMIT_RETRY_SCHEDULE="0")
    await add_member_keys(settings, KEY_B, KEY_C)
    async with in_process(settings) as (http, app):
        job = await http.post(
            "/v1/jobs",
            json={"model": "trinetra/kling-v2.5", "input": {"prompt": "A cat"}},
            headers=as_key(KEY_C),
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        sub = await http.post(
            "/v1/subscriptions", json={"url": f"{dead_url}/hook"}, headers=as_key(KEY_C)
        )
        sub_id = sub.json()["id"]
        event_id = (
            await http.post(f"/v1/subscriptions/{sub_id}/test", headers=as_key(KEY_C))
        ).json()["event_id"]
        listed = await http.get("/v1/deliveries", params={"event": event_id})
        (delivery,) = listed.json()["data"]
        names = {
            job_id: "job_01JZZZZZZZZZZZZZZZZZZZZZZZ",
            sub_id: "sub_01JZZZZZZZZZZZZZZZZZZZZZZZ",
            event_id: "evt_01JZZZZZZZZZZZZZZZZZZZZZZZ",
            delivery["id"]: "dlv_01JZZZZZZZZZZZZZZZZZZZZZZZ",
        }
        probes: list[tuple[str, str, dict[str, str], Any]] = [
            ("GET", f"/v1/jobs/{job_id}", {}, None),
            ("POST", f"/v1/jobs/{job_id}/cancel", {}, None),
            ("GET", f"/v1/subscriptions/{sub_id}", {}, None),
            ("PATCH", f"/v1/subscriptions/{sub_id}", {}, {"description": "mine now"}),
            ("POST", f"/v1/subscriptions/{sub_id}/test", {}, None),
            ("POST", f"/v1/subscriptions/{sub_id}/rotate-secret", {}, None),
            ("POST", f"/v1/subscriptions/{sub_id}/recover", {"since": "0"}, None),
            ("DELETE", f"/v1/subscriptions/{sub_id}", {}, None),
            ("GET", f"/v1/deliveries/{delivery['id']}", {}, None),
            ("POST", f"/v1/deliveries/{delivery['id']}/retry", {}, None),
            ("GET", "/v1/deliveries", {"subscription": sub_id}, None),
            ("GET", "/v1/deliveries", {"subscription_id": sub_id}, None),
            ("GET", "/v1/deliveries", {"event": event_id}, None),
            ("GET", "/v1/deliveries", {"job": job_id}, None),
            ("GET", "/v1/events", {"after": event_id}, None),
            ("GET", "/v1/events/stream", {"after": event_id}, None),
        ]
        for method, path, query, body in probes:
            unknown_path, unknown_query = path, dict(query)
            for their_id, unknown_id in names.items():
                unknown_path = unknown_path.replace(their_id, unknown_id)
                unknown_query = {
                    k: v.replace(their_id, unknown_id) for k, v in unknown_query.items()
                }
            answers = [
                await http.request(method, p, params=q, json=body, headers=as_key(KEY_B))
                for p, q in ((path, query), (unknown_path, unknown_query))
            ]
            _same_answer(answers[0], answers[1], names)
        # The same in the console, signed in as the probing key.
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://reelhook.test"
        ) as browser:
            form = await browser.get("/console/sign-in")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf is not None
            signed_in = await browser.post(
                "/console/sign-in", data={"csrf": csrf.group(1), "api_key": KEY_B}
            )
            assert signed_in.status_code == 303, signed_in.text
            for path in (
                f"/console/jobs/{job_id}",
                f"/console/subscriptions/{sub_id}",
                f"/console/deliveries/{delivery['id']}",
                f"/console/deliveries?subscription={sub_id}",
            ):
                unknown_path = path
                for their_id, unknown_id in names.items():
                    unknown_path = unknown_path.replace(their_id, unknown_id)
                theirs, unknown = await browser.get(path), await browser.get(unknown_path)
                _same_answer(theirs, unknown, names)
        # Nothing of the other key's changed.
        still = await http.get(f"/v1/subscriptions/{sub_id}", headers=as_key(KEY_C))
        assert still.status_code == 200 and still.json()["description"] == ""
        assert (await http.get(f"/v1/jobs/{job_id}", headers=as_key(KEY_C))).status_code == 200


async def test_the_subscription_quota_holds_across_nodes(pg_database: str, tmp_path: Path) -> None:
    """Two nodes on one PostgreSQL database creating one key's subscriptions at once: the quota
    holds for the cluster, not per node (each counting in its own transaction lets both insert
    the last one)."""
    quota = 3
    nodes = [
        settings_for(
            tmp_path / name,
            DATABASE_URL=pg_database,
            MAX_SUBSCRIPTIONS_PER_KEY=str(quota),
            RATE_LIMIT="0",
        )
        for name in ("a", "b")
    ]
    await add_member_keys(nodes[0], KEY_B)
    answers: list[int] = []
    async with api_client(nodes[0]) as a, api_client(nodes[1]) as b:
        for _ in range(3):  # rounds, so the race gets its chances

            async def create(http: httpx.AsyncClient) -> None:
                answer = await http.post(
                    "/v1/subscriptions",
                    json={"url": "https://example.com/hook"},
                    headers=as_key(KEY_B),
                )
                answers.append(answer.status_code)

            async with anyio.create_task_group() as tg:
                for http in (a, b) * 4:
                    tg.start_soon(create, http)
        listed = await a.get("/v1/subscriptions", headers=as_key(KEY_B))
    assert len(listed.json()["data"]) == quota
    assert sorted(answers) == [201] * quota + [429] * (24 - quota)


async def test_the_console_stream_counts_against_the_quota_and_gives_its_place_back(
    tmp_path: Path,
) -> None:
    """The console's live stream holds a place of the signed-in key's stream quota, as the API's
    does, and gives it back however it ends: a HEAD once answered, a page when it goes."""
    with loopback_socket() as sock:
        settings = settings_for(
            tmp_path, PUBLIC_URL=url_of(sock), STREAM_KEEPALIVE="60", MAX_STREAMS_PER_KEY="1"
        )
        async with (
            served(settings, sock) as api,
            httpx.AsyncClient(base_url=api.base_url) as browser,
        ):
            form = await browser.get("/console/sign-in")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf, form.text
            signed_in = await browser.post(
                "/console/sign-in", data={"csrf": csrf.group(1), "api_key": ADMIN_KEY}
            )
            assert signed_in.status_code == 303, signed_in.text
            for _ in range(3):
                head = await browser.head("/console/stream")
                assert head.status_code == 200, head.text
                assert head.headers["content-type"].startswith("text/event-stream")
            for _ in range(3):
                # The place of the page before is given back when its connection goes, which the
                # server sees a moment after the client dropped it.
                with anyio.fail_after(10):
                    while True:
                        async with browser.stream(
                            "GET", "/console/stream", timeout=httpx.Timeout(10.0)
                        ) as page:
                            if page.status_code == 200:
                                # Kept referenced: a collected reader closes its response.
                                reader = Stream(page)
                                await reader.position()
                                refused = await api.get("/v1/events/stream")
                                assert_error(refused, 429, "quota_exceeded")
                                break
                            await page.aread()
                            assert page.status_code == 429, page.text  # the console's error page
                        await anyio.sleep(0.05)


async def test_the_stream_quota_holds_across_nodes(pg_database: str, tmp_path: Path) -> None:
    """Streams of one key open on two nodes count against one quota; a closed one, or one on
    a node that stops, gives its place back."""
    socks = [loopback_socket(), loopback_socket()]
    nodes = [
        settings_for(
            tmp_path / name,
            DATABASE_URL=pg_database,
            PUBLIC_URL=url_of(sock),
            STREAM_KEEPALIVE="60",
            MAX_STREAMS_PER_KEY="2",
        )
        for name, sock in zip(("a", "b"), socks, strict=True)
    ]
    with socks[0], socks[1]:
        async with served(nodes[0], socks[0]) as a, served(nodes[1], socks[1]) as b:
            async with open_stream(a) as one, open_stream(b) as two:
                await one.position()
                await two.position()
                # Each node holds one: a third, on either, is over the key's quota.
                for http in (a, b):
                    refused = await http.get("/v1/events/stream")
                    error = assert_error(refused, 429, "quota_exceeded")
                    assert "REELHOOK_MAX_STREAMS_PER_KEY" in error["message"]
            # Closed streams give their places back, on every node.
            with anyio.fail_after(10):
                while True:
                    try:
                        async with open_stream(b) as three, open_stream(b) as four:
                            await three.position()
                            await four.position()
                            break
                    except AssertionError:
                        await anyio.sleep(0.05)


async def test_streams_opened_at_once_past_the_quota_are_refused_with_429(
    request: pytest.FixtureRequest, tmp_path: Path, dead_url: str
) -> None:
    """One key opens one stream more than its quota, all at once (on PostgreSQL, over two nodes
    on one database): exactly the quota's worth open, and the rest are refused with the 429
    JSON error before any byte of a stream (neither a 200 that ends at once, nor a stream over
    the quota); the streams let in are still open when the refusal comes (each carries the
    next event). A HEAD holds no place once answered."""
    quota = 3
    on_postgresql = request.config.getoption("--store") == "postgresql"
    socks = [loopback_socket(), loopback_socket()] if on_postgresql else [loopback_socket()]
    nodes = [
        settings_for(
            tmp_path / f"node{n}",
            PUBLIC_URL=url_of(sock),
            STREAM_KEEPALIVE="60",
            MAX_STREAMS_PER_KEY=str(quota),
            RATE_LIMIT="0",
        )
        for n, sock in enumerate(socks)
    ]
    answers: list[int] = []
    # Each open stream's reader stays referenced until the end: a dropped reader's line iterator
    # is closed when it is collected, which closes its response and connection, so the server
    # ends that stream and frees its place (a fourth stream, arriving later, then took it).
    streams: list[Stream] = []
    opened = anyio.Event()
    done = anyio.Event()

    async def open_one(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/v1/events/stream", timeout=httpx.Timeout(10.0)) as response:
            answers.append(response.status_code)
            if response.status_code == 200:
                stream = Stream(response)
                await stream.position()
                streams.append(stream)
            else:
                await response.aread()
                error = assert_error(response, 429, "quota_exceeded")
                assert error["details"] == {"quota": "REELHOOK_MAX_STREAMS_PER_KEY", "limit": quota}
            if len(answers) == quota + 1 and len(streams) + answers.count(429) == quota + 1:
                opened.set()
            # Open streams stay open until every answer is in and checked.
            await done.wait()

    async with contextlib.AsyncExitStack() as stack:
        for sock in socks:
            stack.enter_context(sock)
        clients = [
            await stack.enter_async_context(served(settings, sock))
            for settings, sock in zip(nodes, socks, strict=True)
        ]
        sub = await subscribe(clients[0], dead_url)
        for _ in range(quota + 1):
            for http in clients:
                head = await http.head("/v1/events/stream")
                assert head.status_code == 200, head.text
        async with anyio.create_task_group() as tg:
            for n in range(quota + 1):
                tg.start_soon(open_one, clients[n % len(clients)])
            with anyio.fail_after(10):
                await opened.wait()
            assert sorted(answers) == [200] * quota + [429]
            assert len(streams) == quota
            # The streams let in were open when the fourth was refused, and still are.
            sent = await ping(clients[0], sub["id"])
            for stream in streams:
                (event,) = await stream.events(1, within=10)
                assert event["id"] == sent
            done.set()


async def test_hanging_subscribers_give_their_send_slots_back_before_any_timeout(
    settings_factory: SettingsFactory,
) -> None:
    """Four subscriptions that never answer, with more attempts wanted than there are send
    slots, and a delivery timeout (60 s) far beyond the test's waits (20 s): each attempt gives
    its slot back once it has waited ``DELIVERY_SLOW_AFTER`` (or, once as many slow attempts
    as slots are open, gives up as timed out), so a healthy subscription's deliveries all go
    out long before any hanging request could time out."""
    settings = settings_factory(
        DELIVERY_CONCURRENCY="4",
        SUBSCRIPTION_CONCURRENCY="2",
        DELIVERY_TIMEOUT="60",
        # Not shorter: the service, the subscribers and the test share one event loop, and a
        # healthy attempt caught by a stall of a loaded machine longer than this is judged slow
        # like a hanging one. With the hanging attempts holding every slow place it is then given
        # up, and its retry queues on probation behind them for the whole timeout (at 0.05 s one
        # 0.1 s stall as a healthy attempt started failed the test after 20 s).
        DELIVERY_SLOW_AFTER="1",
        RETRY_OVERLOAD_FLOOR="0",
    )
    hangers = Hangers()
    paths = [f"/hang/{n}" for n in range(4)]
    async with run_server(hangers) as url, api_client(settings) as http:
        hanging = [await subscribe(http, f"{url}{path}") for path in paths]
        for sub in hanging:
            for _ in range(3):
                await ping(http, sub["id"])
        # Every send slot was taken by a hanging request (2 each could be open at once).
        await hangers.wait_for(lambda h: sum(h.open.values()) >= 4)
        healthy = await subscribe(http, f"{url}/ok")
        for count in range(1, 6):
            await ping(http, healthy["id"])
            await hangers.wait_for(_oks(count))
    # Open at once: at most the four send slots plus as many slow attempts.
    assert max(hangers.open_at_ok) <= 8, hangers.open_at_ok
