"""``GET /v1/events``: the append-only event log, its filters, cursors and errors.

Query errors are checked in-process. The log's content is checked twice: in-process with events the
service publishes without any provider (a refused submit, pings), and against a real reelhook
server whose in-process simulator finishes jobs and calls back over loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import SettingsFactory
from tests.servers import Sink
from tests.support import assert_error, served_with_sink, wait_for_job

pytestmark = pytest.mark.anyio

V3 = "trinetra/kling-v3"
SEGMIND = "segmind/kling-2.5-turbo"


async def events(http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await http.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def walk(http: httpx.AsyncClient, **params: str) -> list[list[dict[str, Any]]]:
    """Every page of the log for ``params``, following ``next_cursor`` to the end."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        page = await events(http, **(params if cursor is None else {**params, "cursor": cursor}))
        pages.append(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


# --- errors --------------------------------------------------------------------------------------


async def test_the_event_log_requires_an_api_key(shared_api: httpx.AsyncClient) -> None:
    request = shared_api.build_request("GET", "/v1/events")
    del request.headers["X-API-Key"]
    assert_error(await shared_api.send(request), 401, "unauthorized")
    wrong = await shared_api.get("/v1/events", headers={"X-API-Key": "rh_not_a_key"})
    assert_error(wrong, 401, "unauthorized")


async def test_an_empty_log_is_an_empty_page(shared_api: httpx.AsyncClient) -> None:
    assert await events(shared_api) == {"data": [], "next_cursor": None}
    assert await events(shared_api, type="") == {"data": [], "next_cursor": None}
    assert await events(shared_api, type="job.succeeded,ping") == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"type": "job.done"}, "type"),
        ({"type": "job.succeeded,job.done"}, "type"),
        ({"type": "JOB.SUCCEEDED"}, "type"),
        ({"type": "succeeded"}, "type"),
        ({"type": "job.succeeded job.failed"}, "type"),
        ({"after": "evt_00000000000000000000000000"}, "after"),
        ({"after": "nope"}, "after"),
        ({"after": ""}, "after"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": "1.5"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "evt_00000000000000000000000000"}, "cursor"),
        ({"cursor": "\u00b2"}, "cursor"),  # superscript two: str.isdigit() says yes, int() says no
        ({"cursor": "9" * 19}, "cursor"),  # past SQLite's 64-bit integers
        ({"cursor": "1" * 30}, "cursor"),
        ({"cursor": "1" * 5000}, "cursor"),  # past int()'s default digit limit
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "-5"}, "limit"),
        ({"limit": "1" * 30}, "limit"),
        ({"limit": "1" * 5000}, "limit"),
    ],
)
async def test_a_bad_event_query_is_a_422_naming_the_parameter(
    shared_api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    assert_error(await shared_api.get("/v1/events", params=params), 422, "validation_failed", field)


async def test_the_longest_cursor_accepted_is_18_digits(shared_api: httpx.AsyncClient) -> None:
    """Integer parameters are capped at 18 digits, which every SQLite integer comparison holds."""
    assert await events(shared_api, cursor="9" * 18) == {"data": [], "next_cursor": None}
    assert await events(shared_api, cursor="0" * 18) == {"data": [], "next_cursor": None}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_the_event_log_is_read_only(shared_api: httpx.AsyncClient, method: str) -> None:
    assert_error(await shared_api.request(method, "/v1/events"), 405, "method_not_allowed")


# --- in-process log ---------------------------------------------------------------------------


async def test_published_events_are_listed_in_order_and_filtered(
    api: httpx.AsyncClient, dead_url: str
) -> None:
    """A failed submit and a ping publish events without any provider accepting a job."""
    failed = await api.post("/v1/jobs", json={"model": V3, "input": {"prompt": "a"}})
    assert failed.status_code == 202, failed.text
    job_id = failed.json()["id"]
    await wait_for_job(api, job_id, ("failed",))
    sub = await api.post("/v1/subscriptions", json={"url": f"{dead_url}/hook"})
    assert sub.status_code == 201, sub.text
    ping = await api.post(f"/v1/subscriptions/{sub.json()['id']}/test")
    assert ping.status_code == 202, ping.text
    ping_id = ping.json()["event_id"]

    log = (await events(api))["data"]
    assert [(e["type"], e["id"]) for e in log][1:] == [("ping", ping_id)]
    first = log[0]
    assert set(first) == {"id", "type", "timestamp", "data"}
    assert first["type"] == "job.failed" and first["id"].startswith("evt_")
    assert first["data"]["id"] == job_id and first["data"]["status"] == "failed"
    assert first["data"]["error"]["kind"] == "provider_error"
    assert log[1]["data"] == {"subscription_id": sub.json()["id"]}

    assert [e["id"] for e in (await events(api, type="ping"))["data"]] == [ping_id]
    assert [e["id"] for e in (await events(api, type="job.failed"))["data"]] == [first["id"]]
    assert (await events(api, type="job.succeeded"))["data"] == []
    assert [e["id"] for e in (await events(api, after=first["id"]))["data"]] == [ping_id]
    assert await events(api, after=ping_id) == {"data": [], "next_cursor": None}


# --- against a real server whose simulator finishes jobs -----------------------------------------


async def submit_and_finish(
    http: httpx.AsyncClient, sink: Sink, sink_url: str, model: str, count: int
) -> list[str]:
    """Submit ``count`` jobs of ``model`` and wait until the simulator has finished them all."""
    sub = await http.post(
        "/v1/subscriptions", json={"url": f"{sink_url}/done", "event_types": ["job.succeeded"]}
    )
    assert sub.status_code == 201, sub.text
    job_ids = []
    for number in range(1, count + 1):
        response = await http.post(
            "/v1/jobs",
            json={"model": model, "input": {"prompt": "p"}, "metadata": {"chat": number}},
        )
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])
    await sink.wait_for(lambda s: len(s.on("/done")) >= count, within=3)
    return job_ids


@pytest.fixture
async def finished(
    settings_factory: SettingsFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """A served reelhook after two (Segmind) jobs were submitted and finished; their ids."""
    async with served_with_sink(settings_factory, SIM_DELAY="0.1") as (http, sink, sink_url):
        yield http, await submit_and_finish(http, sink, sink_url, SEGMIND, 2)


async def test_a_finished_job_leaves_submitted_then_succeeded(
    finished: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, job_ids = finished
    page = await events(http)
    assert page["next_cursor"] is None
    log = page["data"]
    assert len({e["id"] for e in log}) == len(log) == 4
    for number, job_id in enumerate(job_ids, start=1):
        mine = [e for e in log if e["data"]["id"] == job_id]
        assert [e["type"] for e in mine] == ["job.submitted", "job.succeeded"]
        for event in mine:
            assert event["data"]["status"] == event["type"].removeprefix("job.")
            assert event["data"]["metadata"] == {"chat": number}
        assert mine[1]["data"]["outputs"][0]["url"].startswith("http")
    assert [e["timestamp"] for e in log] == sorted(e["timestamp"] for e in log)


async def test_a_trinetra_job_finished_by_callback_is_logged(
    settings_factory: SettingsFactory,
) -> None:
    async with served_with_sink(settings_factory, SIM_DELAY="0.1") as (http, sink, sink_url):
        [job_id] = await submit_and_finish(http, sink, sink_url, V3, 1)
        log = (await events(http))["data"]
    assert [(e["type"], e["data"]["id"]) for e in log] == [
        ("job.submitted", job_id),
        ("job.succeeded", job_id),
    ]
    assert log[1]["data"]["cost"]["charged"] == 95


async def test_the_log_pages_with_cursor_and_after(
    finished: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, _ = finished
    everything = [e["id"] for e in (await events(http))["data"]]
    assert len(everything) == 4

    for limit, sizes in (("1", [1, 1, 1, 1]), ("3", [3, 1]), ("4", [4])):
        pages = await walk(http, limit=limit)
        assert [len(page) for page in pages] == sizes
        assert [e["id"] for page in pages for e in page] == everything

    for index, event_id in enumerate(everything):
        after = await events(http, after=event_id)
        assert [e["id"] for e in after["data"]] == everything[index + 1 :]
        assert after["next_cursor"] is None
    paged_after = await walk(http, after=everything[0], limit="2")
    assert [[e["id"] for e in page] for page in paged_after] == [everything[1:3], everything[3:]]


async def test_the_type_filter_selects_event_types(
    finished: tuple[httpx.AsyncClient, list[str]],
) -> None:
    http, job_ids = finished
    everything = (await events(http))["data"]

    succeeded = (await events(http, type="job.succeeded"))["data"]
    assert [e["type"] for e in succeeded] == ["job.succeeded", "job.succeeded"]
    assert {e["data"]["id"] for e in succeeded} == set(job_ids)
    assert [e["id"] for e in succeeded] == [
        e["id"] for e in everything if e["type"] == "job.succeeded"
    ]

    both = (await events(http, type="job.submitted,job.succeeded"))["data"]
    assert [e["id"] for e in both] == [e["id"] for e in everything]
    assert (await events(http, type="job.failed,ping"))["data"] == []

    pages = await walk(http, type="job.submitted", limit="1")
    assert [[e["type"] for e in page] for page in pages] == [["job.submitted"], ["job.submitted"]]
    after_first = await events(http, type="job.succeeded", after=everything[0]["id"])
    assert [e["id"] for e in after_first["data"]] == [e["id"] for e in succeeded]
