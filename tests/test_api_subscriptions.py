"""``/v1/subscriptions``: create, read, list, update, delete, and every way to get them wrong.

Subscriber URLs used only for validation name hosts under ``.test`` (never resolvable) and no event
is ever published to them; deliveries that are sent go to a loopback :class:`Sink`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from service.app.settings import Settings
from tests.conftest import SettingsFactory
from tests.servers import Sink, run_server
from tests.support import api_client, assert_error, send_without_key, stored

pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example.test/reelhook"
V3 = "trinetra/kling-v3"
MISSING = "sub_00000000000000000000000000"


async def create(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/subscriptions", json={"url": HOOK, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def assert_no_subscriptions(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/subscriptions")
    assert response.status_code == 200, response.text
    assert response.json() == {"data": [], "next_cursor": None}


@pytest.fixture
async def strict(settings_factory: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook with the production default: no private subscriber addresses allowed."""
    async with api_client(settings_factory(ALLOW_PRIVATE_SUBSCRIBERS="")) as http:
        yield http


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, str]]:
    recorder = Sink()
    async with run_server(recorder.app()) as url:
        yield recorder, url


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/subscriptions"),
        ("GET", "/v1/subscriptions"),
        ("GET", f"/v1/subscriptions/{MISSING}"),
        ("PATCH", f"/v1/subscriptions/{MISSING}"),
        ("DELETE", f"/v1/subscriptions/{MISSING}"),
        ("POST", f"/v1/subscriptions/{MISSING}/test"),
    ],
)
async def test_subscription_endpoints_require_an_api_key(
    shared_api: httpx.AsyncClient, method: str, path: str
) -> None:
    missing = await send_without_key(shared_api, method, path, json={"url": HOOK})
    assert_error(missing, 401, "unauthorized")
    wrong = await shared_api.request(
        method, path, json={"url": HOOK}, headers={"X-API-Key": "nope"}
    )
    assert_error(wrong, 401, "unauthorized")
    await assert_no_subscriptions(shared_api)


async def test_an_existing_subscription_is_hidden_from_a_bad_key(client: httpx.AsyncClient) -> None:
    sub = await create(client)
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method, f"/v1/subscriptions/{sub['id']}", json={}, headers={"X-API-Key": "nope"}
        )
        assert_error(response, 401, "unauthorized")
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).status_code == 200


# --- create, read, list, delete ------------------------------------------------------------------


async def test_create_returns_201_with_a_secret_shown_once(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/subscriptions",
        json={
            "url": HOOK,
            "event_types": ["job.succeeded", "job.failed"],
            "models": [V3],
            "headers": {"X-N8N-Auth": "n8n-token"},
            "description": "the n8n flow",
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"].startswith("sub_")
    assert response.headers["location"] == f"/v1/subscriptions/{created['id']}"
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > len("whsec_") + 20
    assert created["url"] == HOOK
    assert created["event_types"] == ["job.succeeded", "job.failed"]
    assert created["models"] == [V3]
    assert created["description"] == "the n8n flow"
    assert created["status"] == "active"

    fetched = await client.get(f"/v1/subscriptions/{created['id']}")
    assert fetched.status_code == 200, fetched.text
    assert "secret" not in fetched.json()
    assert created["secret"] not in fetched.text
    assert fetched.json() == {k: v for k, v in created.items() if k != "secret"}

    listed = await client.get("/v1/subscriptions")
    assert [s["id"] for s in listed.json()["data"]] == [created["id"]]
    assert "secret" not in listed.json()["data"][0]
    assert created["secret"] not in listed.text

    patched = await client.patch(f"/v1/subscriptions/{created['id']}", json={"description": "x"})
    assert patched.status_code == 200, patched.text
    assert "secret" not in patched.json()
    assert created["secret"] not in patched.text


async def test_every_subscription_gets_its_own_secret(client: httpx.AsyncClient) -> None:
    secrets = {(await create(client))["secret"] for _ in range(3)}
    assert len(secrets) == 3


async def test_a_minimal_subscription_gets_defaults(client: httpx.AsyncClient) -> None:
    sub = await create(client)
    assert sub["event_types"] == [] and sub["models"] == [] and sub["headers"] == {}
    assert sub["description"] == "" and sub["status"] == "active"


async def test_null_and_duplicate_filters(client: httpx.AsyncClient) -> None:
    sub = await create(client, event_types=["job.failed", "job.failed"], models=None, headers=None)
    assert sub["event_types"] == ["job.failed"]
    assert sub["models"] == [] and sub["headers"] == {}


async def test_subscriptions_list_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    made = [(await create(client, description=str(n)))["id"] for n in range(5)]
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2"} if cursor is None else {"limit": "2", "cursor": cursor}
        response = await client.get("/v1/subscriptions", params=params)
        assert response.status_code == 200, response.text
        pages.append([s["id"] for s in response.json()["data"]])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "pagination does not end"
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [sub_id for page in pages for sub_id in page] == sorted(made)


@pytest.mark.parametrize(
    "limit",
    ["0", "-3", "201", "ten", "", "\u00b2", "1" * 30, "1" * 5000],
    ids=lambda limit: repr(limit) if len(limit) < 20 else f"{len(limit)} digits",
)
async def test_a_bad_list_limit_is_a_422(shared_api: httpx.AsyncClient, limit: str) -> None:
    response = await shared_api.get("/v1/subscriptions", params={"limit": limit})
    assert_error(response, 422, "validation_failed", "limit")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/test")],
)
@pytest.mark.parametrize("sub_id", [MISSING, "nope", "job_00000000000000000000000000"])
async def test_an_unknown_subscription_is_a_404(
    shared_api: httpx.AsyncClient, method: str, suffix: str, sub_id: str
) -> None:
    response = await shared_api.request(
        method, f"/v1/subscriptions/{sub_id}{suffix}", json={"description": "x"}
    )
    assert_error(response, 404, "not_found")


async def test_delete_removes_the_subscription(client: httpx.AsyncClient) -> None:
    keep = await create(client, description="keep")
    gone = await create(client, description="gone")
    response = await client.delete(f"/v1/subscriptions/{gone['id']}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_error(await client.get(f"/v1/subscriptions/{gone['id']}"), 404, "not_found")
    assert_error(await client.delete(f"/v1/subscriptions/{gone['id']}"), 404, "not_found")
    assert_error(
        await client.patch(f"/v1/subscriptions/{gone['id']}", json={"status": "active"}),
        404,
        "not_found",
    )
    listed = (await client.get("/v1/subscriptions")).json()["data"]
    assert [s["id"] for s in listed] == [keep["id"]]


# --- validation ----------------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing url", {}, "url"),
    ("url null", {"url": None}, "url"),
    ("url not a string", {"url": 42}, "url"),
    ("url a list", {"url": [HOOK]}, "url"),
    ("ftp url", {"url": "ftp://hooks.example.test/x"}, "url"),
    ("javascript url", {"url": "javascript:alert(1)"}, "url"),
    ("file url", {"url": "file:///etc/passwd"}, "url"),
    ("relative url", {"url": "/v1/hook"}, "url"),
    ("no host", {"url": "https:///hook"}, "url"),
    ("empty url", {"url": ""}, "url"),
    ("credentials", {"url": "https://user:pw@hooks.example.test/x"}, "url"),
    ("user only", {"url": "https://user@hooks.example.test/x"}, "url"),
    ("bad port", {"url": "https://hooks.example.test:99999/x"}, "url"),
    ("unknown event type", {"url": HOOK, "event_types": ["job.done"]}, "event_types"),
    ("event type of another case", {"url": HOOK, "event_types": ["JOB.FAILED"]}, "event_types"),
    ("event types a string", {"url": HOOK, "event_types": "job.failed"}, "event_types"),
    ("event types of numbers", {"url": HOOK, "event_types": [1]}, "event_types"),
    ("unknown model filter", {"url": HOOK, "models": ["trinetra/kling-v9"]}, "models"),
    ("model filter a string", {"url": HOOK, "models": V3}, "models"),
    ("model filter without provider", {"url": HOOK, "models": ["kling-v3"]}, "models"),
    (
        "reserved webhook-signature",
        {"url": HOOK, "headers": {"webhook-signature": "v1,x"}},
        "headers",
    ),
    ("reserved Webhook-Id", {"url": HOOK, "headers": {"Webhook-Id": "evt_1"}}, "headers"),
    ("reserved timestamp", {"url": HOOK, "headers": {"WEBHOOK-TIMESTAMP": "1"}}, "headers"),
    ("reserved content-type", {"url": HOOK, "headers": {"Content-Type": "text/plain"}}, "headers"),
    ("reserved host", {"url": HOOK, "headers": {"Host": "internal"}}, "headers"),
    ("reserved content-length", {"url": HOOK, "headers": {"content-length": "0"}}, "headers"),
    ("header value a number", {"url": HOOK, "headers": {"X-Auth": 1}}, "headers"),
    ("header value null", {"url": HOOK, "headers": {"X-Auth": None}}, "headers"),
    ("header value a list", {"url": HOOK, "headers": {"X-Auth": ["a"]}}, "headers"),
    ("header value an object", {"url": HOOK, "headers": {"X-Auth": {"v": "a"}}}, "headers"),
    ("headers a string", {"url": HOOK, "headers": "X-Auth: a"}, "headers"),
    ("headers a list", {"url": HOOK, "headers": [["X-Auth", "a"]]}, "headers"),
    ("header name with colon", {"url": HOOK, "headers": {"X-Auth:": "a"}}, "headers"),
    ("header name with space", {"url": HOOK, "headers": {"X Auth": "a"}}, "headers"),
    ("empty header name", {"url": HOOK, "headers": {"": "a"}}, "headers"),
    ("header value with CRLF", {"url": HOOK, "headers": {"X-Auth": "a\r\nX-Evil: 1"}}, "headers"),
    ("header value with NUL", {"url": HOOK, "headers": {"X-Ok": "v\u0000x"}}, "headers"),
    ("header value with DEL", {"url": HOOK, "headers": {"X-Ok": "v\u007fx"}}, "headers"),
    ("header value with a lone LF", {"url": HOOK, "headers": {"X-Ok": "v\nx"}}, "headers"),
    ("header value not ASCII", {"url": HOOK, "headers": {"X-Ok": "caf\u00e9"}}, "headers"),
    ("header value over 4096", {"url": HOOK, "headers": {"X-Ok": "v" * 4097}}, "headers"),
    ("header name with parentheses", {"url": HOOK, "headers": {"X(y)": "v"}}, "headers"),
    ("header name with a slash", {"url": HOOK, "headers": {"X/y": "v"}}, "headers"),
    ("header name with NUL", {"url": HOOK, "headers": {"X-\u0000": "v"}}, "headers"),
    ("header name not ASCII", {"url": HOOK, "headers": {"X-N\u00e4me": "v"}}, "headers"),
    ("header name over 256", {"url": HOOK, "headers": {"X" * 257: "v"}}, "headers"),
    ("description too long", {"url": HOOK, "description": "d" * 501}, "description"),
    ("description a number", {"url": HOOK, "description": 5}, "description"),
    ("unknown field", {"url": HOOK, "secret": "whsec_mine"}, "secret"),
    ("status on create", {"url": HOOK, "status": "disabled"}, "status"),
    ("misspelt field", {"url": HOOK, "event_type": ["job.failed"]}, "event_type"),
]


@pytest.mark.parametrize(
    ("body", "field"), [pytest.param(body, field, id=name) for name, body, field in INVALID]
)
async def test_an_invalid_subscription_is_a_422_naming_the_field(
    shared_api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await shared_api.post("/v1/subscriptions", json=body)
    assert_error(response, 422, "validation_failed", field)
    await assert_no_subscriptions(shared_api)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"event_types": ""}, "event_types", id="event_types empty string"),
        pytest.param({"event_types": False}, "event_types", id="event_types false"),
        pytest.param({"event_types": {}}, "event_types", id="event_types object"),
        pytest.param({"models": 0}, "models", id="models zero"),
        pytest.param({"models": ""}, "models", id="models empty string"),
        pytest.param({"headers": []}, "headers", id="headers list"),
        pytest.param({"headers": ""}, "headers", id="headers empty string"),
        pytest.param({"headers": False}, "headers", id="headers false"),
    ],
)
async def test_a_falsy_value_of_the_wrong_type_is_a_422(
    shared_api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    """``false``, ``0``, ``""`` and ``[]`` are not lists or objects and must not pass as empty."""
    response = await shared_api.post("/v1/subscriptions", json={"url": HOOK, **body})
    assert_error(response, 422, "validation_failed", field)
    await assert_no_subscriptions(shared_api)


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "bad_request"),
        (b"{url: 1}", 400, "bad_request"),
        (b'["https://hooks.example.test/x"]', 422, "validation_failed"),
        (b'"https://hooks.example.test/x"', 422, "validation_failed"),
        (b'{"url": "' + b"a" * (256 * 1024) + b'"}', 413, "payload_too_large"),
    ],
    ids=["empty", "not json", "list", "string", "over 256 KiB"],
)
async def test_an_unreadable_body_is_rejected(
    shared_api: httpx.AsyncClient, content: bytes, status: int, code: str
) -> None:
    response = await shared_api.post(
        "/v1/subscriptions", content=content, headers={"Content-Type": "application/json"}
    )
    assert_error(response, status, code)
    await assert_no_subscriptions(shared_api)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/subscriptions"),
        ("DELETE", "/v1/subscriptions"),
        ("POST", f"/v1/subscriptions/{MISSING}"),
        ("GET", f"/v1/subscriptions/{MISSING}/test"),
    ],
)
async def test_a_wrong_method_is_a_json_405(
    shared_api: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_error(await shared_api.request(method, path), 405, "method_not_allowed")


# --- private addresses ---------------------------------------------------------------------------

PRIVATE_HOSTS = [
    "127.0.0.1:{port}",
    "localhost:{port}",
    "LocalHost.:{port}",
    "[::1]:{port}",
    "[::ffff:127.0.0.1]:{port}",
    "0.0.0.0:{port}",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "[fe80::1]",
    "[fc00::1]",
    "100.64.0.1",
]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
async def test_a_private_subscriber_url_is_refused_and_nothing_is_sent(
    strict: httpx.AsyncClient, sink: tuple[Sink, str], host: str
) -> None:
    port = sink[1].rsplit(":", 1)[1]
    url = f"http://{host.format(port=port)}/latest/meta-data/"
    response = await strict.post("/v1/subscriptions", json={"url": url})
    error = assert_error(response, 422, "validation_failed", "url")
    assert "private" in error["details"]["fields"]["url"]
    await assert_no_subscriptions(strict)
    assert sink[0].received == []


async def test_a_subscription_cannot_be_moved_to_a_private_url(strict: httpx.AsyncClient) -> None:
    sub = await create(strict)
    for url in (
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://169.254.169.254/",
        "ftp://a.test/",
    ):
        response = await strict.patch(f"/v1/subscriptions/{sub['id']}", json={"url": url})
        assert_error(response, 422, "validation_failed", "url")
    fetched = (await strict.get(f"/v1/subscriptions/{sub['id']}")).json()
    assert fetched["url"] == HOOK


async def test_the_allow_list_admits_loopback(
    client: httpx.AsyncClient, sink: tuple[Sink, str]
) -> None:
    """The test settings allow 127.0.0.0/8: the refusals above come from the empty allow-list."""
    sub = await client.post("/v1/subscriptions", json={"url": f"{sink[1]}/hook"})
    assert sub.status_code == 201, sub.text


def _attempt_errors(settings: Settings) -> list[str | None]:
    return [row[0] for row in stored(settings, "SELECT error FROM attempts")]


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0177.1", "127.0.1", "017700000001"])
async def test_numeric_shorthand_hosts_are_refused_up_front(
    settings_factory: SettingsFactory, host: str
) -> None:
    """Dotted or bare numbers that are not an IP address are shorthand some resolvers read as
    127.0.0.1, never a real host name: they are refused at creation, allow-list or not."""
    for allow in ("", "127.0.0.0/8"):
        async with api_client(settings_factory(ALLOW_PRIVATE_SUBSCRIBERS=allow)) as http:
            created = await http.post("/v1/subscriptions", json={"url": f"http://{host}:9/hook"})
            error = assert_error(created, 422, "validation_failed", "url")
            assert "not a valid IP address or host name" in error["details"]["fields"]["url"]
            sub = await create(http)
            moved = await http.patch(
                f"/v1/subscriptions/{sub['id']}", json={"url": f"http://{host}:9/hook"}
            )
            assert_error(moved, 422, "validation_failed", "url")


async def _first_attempt_error(settings: Settings) -> str | None:
    """The error of the first delivery attempt, once one is recorded (within 5 s)."""
    with anyio.fail_after(5):
        # No API shows delivery attempts yet, so read them from the database (read-only).
        while True:
            errors = await anyio.to_thread.run_sync(_attempt_errors, settings)
            if errors:
                assert len(errors) == 1, errors
                return errors[0]
            await anyio.sleep(0.02)


@pytest.mark.parametrize("host", ["0x7f.1", "0x7f000001", "0x7f.0.0.1"])
async def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    settings_factory: SettingsFactory, sink: tuple[Sink, str], host: str
) -> None:
    """Hex host forms pass the URL check (they are not IP literals) but resolve to 127.0.0.1 when
    dialled; the connect-time guard refuses them, so the sink never hears from reelhook. With
    loopback allowed, the same URL reaches the sink: only the guard stood in the way."""
    recorder, sink_url = sink
    port = sink_url.rsplit(":", 1)[1]
    url = f"http://{host}:{port}/hook"
    strict = settings_factory(ALLOW_PRIVATE_SUBSCRIBERS="", RETRY_SCHEDULE="0")
    async with api_client(strict) as http:
        created = await http.post("/v1/subscriptions", json={"url": url})
        assert created.status_code == 201, created.text
        ping = await http.post(f"/v1/subscriptions/{created.json()['id']}/test")
        assert ping.status_code == 202, ping.text
        error = await _first_attempt_error(strict)
    assert error, "the one attempt failed without connecting"
    assert recorder.received == []

    allowed = settings_factory(ALLOW_PRIVATE_SUBSCRIBERS="127.0.0.0/8", RETRY_SCHEDULE="0")
    async with api_client(allowed) as http:
        created = await http.post("/v1/subscriptions", json={"url": url})
        assert created.status_code == 201, created.text
        ping = await http.post(f"/v1/subscriptions/{created.json()['id']}/test")
        assert ping.status_code == 202, ping.text
        await recorder.wait_for(lambda s: len(s.on("/hook")) == 1, within=5)
    assert recorder.on("/hook")[0].headers["webhook-id"] == ping.json()["event_id"]


# --- PATCH ---------------------------------------------------------------------------------------


async def test_patch_disables_and_reactivates(client: httpx.AsyncClient) -> None:
    sub = await create(client)
    disabled = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "disabled"})
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["status"] == "disabled"
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["status"] == "disabled"
    active = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "active"})
    assert active.status_code == 200, active.text
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["status"] == "active"


async def test_patch_changes_only_the_fields_sent(client: httpx.AsyncClient) -> None:
    sub = await create(client, event_types=["job.failed"], description="before")
    response = await client.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"event_types": ["job.succeeded", "ping"], "models": [V3]},
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["event_types"] == ["job.succeeded", "ping"]
    assert patched["models"] == [V3]
    assert patched["description"] == "before" and patched["url"] == HOOK
    assert patched["created_at"] == sub["created_at"]
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json() == patched

    unchanged = await client.patch(f"/v1/subscriptions/{sub['id']}", json={})
    assert unchanged.status_code == 200, unchanged.text
    assert {k: v for k, v in unchanged.json().items() if k != "updated_at"} == {
        k: v for k, v in patched.items() if k != "updated_at"
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "paused"}, "status"),
        ({"status": "DISABLED"}, "status"),
        ({"status": None}, "status"),
        ({"status": True}, "status"),
        ({"url": "ftp://hooks.example.test/"}, "url"),
        ({"url": None}, "url"),
        ({"event_types": ["job.done"]}, "event_types"),
        ({"models": ["nope/model"]}, "models"),
        ({"headers": {"Webhook-Signature": "v1,forged"}}, "headers"),
        ({"headers": {"X-Auth": 7}}, "headers"),
        ({"headers": {"X(y)": "v"}}, "headers"),
        ({"headers": {"X-Ok": "v\u0000x"}}, "headers"),
        ({"description": "d" * 501}, "description"),
        ({"secret": "whsec_mine"}, "secret"),
        ({"id": "sub_other"}, "id"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"status": "disabled", "colour": "red"}, "colour"),
    ],
)
async def test_a_bad_patch_is_a_422_and_changes_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    sub = await create(client, headers={"X-Auth": "a"}, event_types=["job.failed"])
    response = await client.patch(f"/v1/subscriptions/{sub['id']}", json=body)
    assert_error(response, 422, "validation_failed", field)
    fetched = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
    assert fetched == {k: v for k, v in sub.items() if k != "secret"}


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "bad_request"),
        (b"{status: disabled}", 400, "bad_request"),
        (b'["disabled"]', 422, "validation_failed"),
    ],
    ids=["empty", "not json", "list"],
)
async def test_an_unreadable_patch_body_is_rejected(
    client: httpx.AsyncClient, content: bytes, status: int, code: str
) -> None:
    sub = await create(client)
    response = await client.patch(
        f"/v1/subscriptions/{sub['id']}",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, status, code)
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["status"] == "active"


# --- static headers ------------------------------------------------------------------------------


async def _ping(http: httpx.AsyncClient, recorder: Sink, sub_id: str, count: int) -> dict[str, str]:
    response = await http.post(f"/v1/subscriptions/{sub_id}/test")
    assert response.status_code == 202, response.text
    assert response.json()["event_id"].startswith("evt_")
    await recorder.wait_for(lambda s: len(s.on("/hook")) >= count, within=5)
    return recorder.on("/hook")[count - 1].headers


async def test_header_values_are_masked_but_delivered(
    client: httpx.AsyncClient, sink: tuple[Sink, str]
) -> None:
    recorder, url = sink
    token = "n8n-token-5f2a9c"
    response = await client.post(
        "/v1/subscriptions", json={"url": f"{url}/hook", "headers": {"X-N8N-Auth": token}}
    )
    assert response.status_code == 201, response.text
    sub = response.json()
    assert sub["headers"] == {"X-N8N-Auth": "********"}
    assert token not in response.text
    for reply in (
        await client.get(f"/v1/subscriptions/{sub['id']}"),
        await client.get("/v1/subscriptions"),
        await client.patch(f"/v1/subscriptions/{sub['id']}", json={"description": "renamed"}),
    ):
        assert reply.status_code == 200, reply.text
        assert token not in reply.text
        assert "********" in reply.text

    # Masking is for display only: the stored value survives a PATCH of another field.
    headers = await _ping(client, recorder, sub["id"], 1)
    assert headers["x-n8n-auth"] == token
    delivery = recorder.on("/hook")[0]
    event = Webhook(sub["secret"]).verify(delivery.body, delivery.headers)
    assert event["type"] == "ping"
    assert event["data"] == {"subscription_id": sub["id"]}

    changed = await client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"headers": {"X-N8N-Auth": "rotated"}}
    )
    assert changed.json()["headers"] == {"X-N8N-Auth": "********"}
    headers = await _ping(client, recorder, sub["id"], 2)
    assert headers["x-n8n-auth"] == "rotated"


async def test_a_header_value_with_spaces_is_accepted_masked_and_delivered(
    client: httpx.AsyncClient, sink: tuple[Sink, str]
) -> None:
    """Header names are RFC 9110 tokens and values visible ASCII, where spaces and tabs are fine:
    the tightened check must not refuse a value such as ``secret value``."""
    recorder, url = sink
    headers = {
        "X-N8N-Auth": "secret value",
        "X-Tab": "a\tb",
        "X-Token-Chars!#$%&'*+.^_`|~": "v",
        "X-Long": "v" * 4096,
        "X" * 256: "longest name",
    }
    response = await client.post(
        "/v1/subscriptions", json={"url": f"{url}/hook", "headers": headers}
    )
    assert response.status_code == 201, response.text
    sub = response.json()
    assert sub["headers"] == dict.fromkeys(headers, "********")
    assert "secret value" not in response.text
    delivered = await _ping(client, recorder, sub["id"], 1)
    assert delivered["x-n8n-auth"] == "secret value"
    assert delivered["x-tab"] == "a\tb"
    assert delivered["x-token-chars!#$%&'*+.^_`|~"] == "v"
    assert delivered["x-long"] == "v" * 4096
    assert delivered["x" * 256] == "longest name"
