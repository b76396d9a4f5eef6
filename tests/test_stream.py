"""``GET /v1/events/stream``: live Server-Sent Events of the log, resumable with Last-Event-ID.

Every test runs reelhook under a real uvicorn on loopback (an in-process ASGI client buffers whole
responses, so it cannot follow a stream). Events come from pings, which need no provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from service.app.factory import create_app
from service.delivery import eventlog
from tests.conftest import SettingsFactory
from tests.helpers.keys import KEY_B, KEY_C, add_member_keys, as_key
from tests.servers import loopback_socket, run_server, url_of
from tests.sse_client import open_stream
from tests.support import ADMIN_KEY, assert_error, send_without_key, served

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def service(
    settings_factory: SettingsFactory, **overrides: str
) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook on loopback; a keep-alive long enough that only a commit can wake a stream."""
    with loopback_socket() as sock:
        settings = settings_factory(
            PUBLIC_URL=url_of(sock), **{"STREAM_KEEPALIVE": "60", **overrides}
        )
        async with served(settings, sock) as http:
            yield http


async def subscription(http: httpx.AsyncClient, url: str, key: str = ADMIN_KEY) -> str:
    created = await http.post("/v1/subscriptions", json={"url": url}, headers={"X-API-Key": key})
    assert created.status_code == 201, created.text
    sub_id: str = created.json()["id"]
    return sub_id


async def ping(http: httpx.AsyncClient, sub_id: str, key: str = ADMIN_KEY) -> str:
    response = await http.post(f"/v1/subscriptions/{sub_id}/test", headers={"X-API-Key": key})
    assert response.status_code == 202, response.text
    event_id: str = response.json()["event_id"]
    return event_id


async def logged(http: httpx.AsyncClient, **params: str) -> list[dict[str, object]]:
    page = await http.get("/v1/events", params={"limit": "1000", **params})
    assert page.status_code == 200, page.text
    assert page.json()["next_cursor"] is None
    data: list[dict[str, object]] = page.json()["data"]
    return data


async def test_a_stream_carries_each_new_event_as_it_is_committed(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    async with service(settings_factory) as http:
        sub_id = await subscription(http, dead_url)
        before = await ping(http, sub_id)
        async with open_stream(http) as live:
            # The stream starts at the end of the log and says so before any event.
            start = await live.position()
            assert int(start) >= 1
            sent = [await ping(http, sub_id) for _ in range(3)]
            received = await live.events(3)
        assert [e["id"] for e in received] == sent
        assert before not in [e["id"] for e in received]
        # Each message is the log's own entry; its SSE id is the entry's position.
        log = {e["id"]: e for e in await logged(http)}
        for event in received:
            assert {k: v for k, v in event.items() if k != "seq"} == log[event["id"]]
            assert event["type"] == "ping"
        seqs = [int(e["seq"]) for e in received]
        assert seqs == sorted(seqs) and seqs[0] > int(start)


async def test_resuming_after_a_dropped_connection_misses_nothing_and_repeats_nothing(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    async with service(settings_factory) as http:
        sub_id = await subscription(http, dead_url)
        async with open_stream(http) as first:
            await first.position()
            early = [await ping(http, sub_id) for _ in range(3)]
            seen = await first.events(3)
            last_id = first.reader.last_event_id
        # The connection is gone; the log moves on without the client.
        missed = [await ping(http, sub_id) for _ in range(4)]
        assert last_id is not None
        async with open_stream(http, Last_Event_ID=last_id) as second:
            caught_up = await second.events(4)
            later = await ping(http, sub_id)
            caught_up += await second.events(1)
        ids = [e["id"] for e in seen + caught_up]
        assert ids == [*early, *missed, later]
        assert ids == [e["id"] for e in await logged(http)]


async def test_resuming_from_the_start_replays_the_whole_log_across_pages(
    settings_factory: SettingsFactory, dead_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog, "STREAM_PAGE", 3)
    async with service(settings_factory) as http:
        sub_id = await subscription(http, dead_url)
        sent = [await ping(http, sub_id) for _ in range(8)]
        async with open_stream(http, Last_Event_ID="0") as replay:
            assert [e["id"] for e in await replay.events(8)] == sent
        async with open_stream(http, params={"last_event_id": "0"}) as by_query:
            assert [e["id"] for e in await by_query.events(8)] == sent
        async with open_stream(http, params={"after": sent[4]}) as after:
            assert [e["id"] for e in await after.events(3)] == sent[5:]


async def test_events_committed_concurrently_all_arrive_once_in_log_order(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    async with service(settings_factory) as http:
        sub_ids = [await subscription(http, dead_url) for _ in range(4)]
        async with open_stream(http) as live:
            await live.position()
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    for sub_id in sub_ids:
                        tg.start_soon(ping, http, sub_id)
            received = await live.events(40)
        log = await logged(http, type="ping")
        assert [e["id"] for e in received] == [e["id"] for e in log]


async def test_type_filters_and_owner_scope_match_the_event_log(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    with loopback_socket() as sock:
        # The in-process simulator is unreachable at dead_url, so every job is accepted and then
        # fails as soon as its one immediate resubmission fails too.
        settings = settings_factory(
            PUBLIC_URL=dead_url, STREAM_KEEPALIVE="60", SUBMIT_RETRY_SCHEDULE="0"
        )
        await add_member_keys(settings, KEY_B, KEY_C)
        async with served(settings, sock) as http:
            sub_id = await subscription(http, dead_url)
            async with (
                open_stream(http, params={"type": "job.failed"}) as failed_only,
                open_stream(http, params={"type": "ping,job.failed"}, X_API_Key=KEY_C) as c_only,
            ):
                await failed_only.position()
                await c_only.position()
                await ping(http, sub_id)
                doomed = await http.post(
                    "/v1/jobs",
                    json={"model": "trinetra/kling-v3", "input": {"prompt": "p"}},
                    headers=as_key(KEY_B),
                )
                assert doomed.status_code == 202, doomed.text
                [failed] = await failed_only.events(1)
                assert failed["data"]["id"] == doomed.json()["id"]
                # Key C hears neither the admin's ping nor B's job; its own job does arrive.
                doomed_c = await http.post(
                    "/v1/jobs",
                    json={"model": "trinetra/kling-v3", "input": {"prompt": "p"}},
                    headers=as_key(KEY_C),
                )
                assert doomed_c.status_code == 202, doomed_c.text
                [own] = await c_only.events(1)
                assert own["data"]["id"] == doomed_c.json()["id"]
                assert own["type"] == "job.failed"


async def test_a_member_keys_stream_alone_gets_its_own_jobs_events_and_no_others(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    """Only a member key's stream is open (no admin stream, which may see every event and so
    makes the tail read every commit): key B's failed job passes it by, its own key's arrives.
    Each commit tells the tail whose job its events are, and the tail reads only for events an
    open stream may see (docs/architecture.md, "A delivery", step 5)."""
    with loopback_socket() as sock:
        settings = settings_factory(
            PUBLIC_URL=dead_url, STREAM_KEEPALIVE="60", SUBMIT_RETRY_SCHEDULE="0"
        )
        await add_member_keys(settings, KEY_B, KEY_C)
        async with (
            served(settings, sock) as http,
            open_stream(http, params={"type": "job.failed"}, X_API_Key=KEY_C) as c_only,
        ):
            await c_only.position()
            jobs = {}
            for key in (KEY_B, KEY_C):
                answer = await http.post(
                    "/v1/jobs",
                    json={"model": "trinetra/kling-v3", "input": {"prompt": "p"}},
                    headers=as_key(key),
                )
                assert answer.status_code == 202, answer.text
                jobs[key] = answer.json()["id"]
            [own] = await c_only.events(1)
            assert own["type"] == "job.failed"
            assert own["data"]["id"] == jobs[KEY_C]


async def test_an_idle_stream_sends_keep_alive_comments(
    settings_factory: SettingsFactory,
) -> None:
    async with (
        service(settings_factory, STREAM_KEEPALIVE="0.05") as http,
        open_stream(http) as idle,
    ):
        await idle.position()
        assert await idle.line() == ": keep-alive"
        assert await idle.line() == ""


@pytest.mark.parametrize(
    ("options", "status", "code", "field"),
    [
        ({"params": {"type": "job.done"}}, 422, "validation_failed", "type"),
        ({"params": {"after": "evt_nope"}}, 422, "validation_failed", "after"),
        ({"headers": {"Last-Event-ID": "abc"}}, 422, "validation_failed", "Last-Event-ID"),
        ({"headers": {"Last-Event-ID": "999999"}}, 422, "validation_failed", "Last-Event-ID"),
        ({"params": {"last_event_id": "-1"}}, 422, "validation_failed", "last_event_id"),
    ],
)
async def test_bad_stream_requests_get_a_json_error(
    api: httpx.AsyncClient,
    options: dict[str, dict[str, str]],
    status: int,
    code: str,
    field: str,
) -> None:
    assert_error(await api.get("/v1/events/stream", **options), status, code, field)  # type: ignore[arg-type]


async def test_the_stream_needs_an_api_key_and_answers_head(api: httpx.AsyncClient) -> None:
    assert_error(await send_without_key(api, "GET", "/v1/events/stream"), 401, "unauthorized")
    head = await api.head("/v1/events/stream")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")


async def test_shutdown_ends_open_streams_cleanly_without_waiting_out_the_grace_period(
    settings_factory: SettingsFactory,
) -> None:
    """uvicorn waits for open responses before the lifespan exit; reelhook's server ends its
    streams first, so shutdown is prompt even with a 60 s grace period, and each stream closes
    with a proper end of body rather than a cut connection."""
    with loopback_socket() as sock:
        settings = settings_factory(PUBLIC_URL=url_of(sock), STREAM_KEEPALIVE="60")
        app = create_app(settings)
        rests: list[list[str]] = []

        async def follow(http: httpx.AsyncClient, opened: anyio.Event) -> None:
            async with open_stream(http) as live:
                await live.position()
                opened.set()
                rest = []
                while (line := await live.line(within=30)) is not None:
                    rest.append(line)
                rests.append(rest)

        async with (
            httpx.AsyncClient(headers={"X-API-Key": ADMIN_KEY}) as http,
            anyio.create_task_group() as followers,
        ):
            with anyio.fail_after(10):
                async with run_server(
                    app, sock, on_shutdown=app.state.end_streams, graceful_timeout=60
                ) as base_url:
                    http.base_url = httpx.URL(base_url)
                    opened = [anyio.Event(), anyio.Event()]
                    for event in opened:
                        followers.start_soon(follow, http, event)
                    for event in opened:
                        await event.wait()
                # Leaving run_server shut the server down: it did not wait out the grace period.
    assert rests == [[], []]
