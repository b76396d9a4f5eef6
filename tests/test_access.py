"""Access control: API keys managed through /v1/keys, scopes on every endpoint, each key's own
jobs and subscriptions, and the per-key rate limit.

reelhook runs in-process with its simulated providers at an unreachable PUBLIC_URL (the ``api``
fixture), so a submitted job is stored and fails at once: enough to own, list and hide.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from service.access.scopes import SCOPES, grants
from service.ops.ratelimit import RateLimiter
from tests.conftest import SettingsFactory
from tests.support import (
    ADMIN_KEY,
    api_client,
    assert_error,
    send_without_key,
    stored_async,
    wait_for_job,
)

pytestmark = pytest.mark.anyio

JOB = {"model": "trinetra/kling-v3", "input": {"prompt": "A red kite over a harbour"}}
HOOK = "http://127.0.0.1:9/hook"


async def make_key(http: httpx.AsyncClient, *scopes: str, name: str = "test") -> dict[str, Any]:
    created = await http.post("/v1/keys", json={"name": name, "scopes": list(scopes)})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def as_key(key: dict[str, Any] | str) -> dict[str, str]:
    return {"X-API-Key": key if isinstance(key, str) else key["key"]}


async def submit(http: httpx.AsyncClient, key: dict[str, Any]) -> str:
    """Submit a job as ``key``; the provider is unreachable, so it stays pending for a retry."""
    accepted = await http.post("/v1/jobs", json=JOB, headers=as_key(key))
    assert accepted.status_code == 202, accepted.text
    job_id: str = accepted.json()["id"]
    return job_id


async def subscribe(http: httpx.AsyncClient, key: dict[str, Any]) -> dict[str, Any]:
    created = await http.post("/v1/subscriptions", json={"url": HOOK}, headers=as_key(key))
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


# --- managing keys ------------------------------------------------------------------------------


async def test_a_new_key_is_shown_once_stored_as_a_digest_and_works(
    api: httpx.AsyncClient, settings_factory: SettingsFactory
) -> None:
    created = await api.post("/v1/keys", json={"name": "chat bot", "scopes": ["jobs:write"]})

    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "name", "scopes", "created_at", "revoked_at", "key"}
    assert body["id"].startswith("key_") and body["key"].startswith("rh_")
    assert len(body["key"]) >= 40
    assert (body["name"], body["scopes"], body["revoked_at"]) == ("chat bot", ["jobs:write"], None)
    assert created.headers["location"] == f"/v1/keys/{body['id']}"
    assert created.headers["cache-control"] == "no-store"

    fetched = await api.get(f"/v1/keys/{body['id']}")
    listed = await api.get("/v1/keys")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == {k: v for k, v in body.items() if k != "key"}
    assert body["key"] not in listed.text and body["key"] not in fetched.text
    assert [k["id"] for k in listed.json()["data"]][-1] == body["id"]

    # The new key works for what it may do.
    job_id = await submit(api, body)
    mine = await api.get(f"/v1/jobs/{job_id}", headers=as_key(body))
    assert mine.status_code == 200, mine.text

    settings = settings_factory()
    found = await stored_async(
        settings, "SELECT key_hash, scopes FROM api_keys WHERE id = ?", (body["id"],)
    )
    everything = repr(await stored_async(settings, "SELECT * FROM api_keys"))
    assert found[0] == (hashlib.sha256(body["key"].encode()).hexdigest(), '["jobs:write"]')
    assert body["key"] not in everything


async def test_two_keys_never_share_a_secret(api: httpx.AsyncClient) -> None:
    first = await make_key(api, "read")
    second = await make_key(api, "read")
    assert first["key"] != second["key"] and first["id"] != second["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["read"]}, "name"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x" * 101, "scopes": ["read"]}, "name"),
        ({"name": "n"}, "scopes"),
        ({"name": "n", "scopes": []}, "scopes"),
        ({"name": "n", "scopes": "read"}, "scopes"),
        ({"name": "n", "scopes": ["jobs:delete"]}, "scopes"),
        ({"name": "n", "scopes": ["read"], "expires": 3}, "expires"),
    ],
)
async def test_a_bad_key_request_is_a_422_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    before = (await api.get("/v1/keys")).json()["data"]
    response = await api.post("/v1/keys", json=body)
    assert_error(response, 422, "validation_failed", field)
    assert (await api.get("/v1/keys")).json()["data"] == before


async def test_an_unknown_scope_is_named_with_the_accepted_ones(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/keys", json={"name": "n", "scopes": ["read", "jobs:delete"]})
    error = assert_error(response, 422, "validation_failed", "scopes")
    assert "'jobs:delete'" in error["message"]
    for scope in SCOPES:
        assert scope in error["message"]


async def test_a_revoked_key_stops_working_at_once(api: httpx.AsyncClient) -> None:
    key = await make_key(api, "read")
    assert (await api.get("/v1/jobs", headers=as_key(key))).status_code == 200

    revoked = await api.delete(f"/v1/keys/{key['id']}")
    assert revoked.status_code == 204, revoked.text

    assert_error(await api.get("/v1/jobs", headers=as_key(key)), 401, "unauthorized")
    listed = {k["id"]: k for k in (await api.get("/v1/keys")).json()["data"]}
    assert listed[key["id"]]["revoked_at"] is not None
    again = await api.delete(f"/v1/keys/{key['id']}")
    assert again.status_code == 204, "revoking twice changes nothing"
    assert_error(await api.delete("/v1/keys/key_unknown"), 404, "not_found")
    assert_error(await api.get("/v1/keys/key_unknown"), 404, "not_found")


async def test_the_last_admin_key_cannot_be_revoked(api: httpx.AsyncClient) -> None:
    (admin,) = [k for k in (await api.get("/v1/keys")).json()["data"] if "admin" in k["scopes"]]
    error = assert_error(await api.delete(f"/v1/keys/{admin['id']}"), 409, "conflict")
    assert "last active admin key" in error["message"]

    # With a second admin key, the first can go, and the second keeps working.
    second = await make_key(api, "admin")
    revoked = await api.delete(f"/v1/keys/{admin['id']}", headers=as_key(second))
    assert revoked.status_code == 204, revoked.text
    assert_error(await api.get("/v1/keys"), 401, "unauthorized")
    assert (await api.get("/v1/keys", headers=as_key(second))).status_code == 200


async def test_a_revoked_admin_key_from_the_environment_stays_revoked_after_a_restart(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with api_client(settings) as http:
        second = await make_key(http, "admin")
        admins = [k for k in (await http.get("/v1/keys")).json()["data"] if k["id"] != second["id"]]
        revoked = await http.delete(f"/v1/keys/{admins[0]['id']}", headers=as_key(second))
        assert revoked.status_code == 204, revoked.text

    async with api_client(settings) as http:  # REELHOOK_ADMIN_KEY is still in the environment
        assert_error(await http.get("/v1/jobs"), 401, "unauthorized")
        assert (await http.get("/v1/jobs", headers=as_key(second))).status_code == 200


# --- scopes -------------------------------------------------------------------------------------

# Every endpoint behind an API key, with the scope it needs. {job}/{sub}/{key} are filled in.
ENDPOINTS = [
    ("POST", "/v1/jobs", "jobs:write"),
    ("GET", "/v1/jobs", "jobs:read"),
    ("GET", "/v1/jobs/{job}", "jobs:read"),
    ("GET", "/v1/events", "jobs:read"),
    ("POST", "/v1/subscriptions", "subscriptions:write"),
    ("GET", "/v1/subscriptions", "subscriptions:read"),
    ("GET", "/v1/subscriptions/{sub}", "subscriptions:read"),
    ("PATCH", "/v1/subscriptions/{sub}", "subscriptions:write"),
    ("DELETE", "/v1/subscriptions/{sub}", "subscriptions:write"),
    ("POST", "/v1/subscriptions/{sub}/test", "subscriptions:write"),
    ("GET", "/v1/keys", "admin"),
    ("POST", "/v1/keys", "admin"),
    ("GET", "/v1/keys/{key}", "admin"),
    ("DELETE", "/v1/keys/{key}", "admin"),
]
BODIES = {
    ("POST", "/v1/jobs"): JOB,
    ("POST", "/v1/subscriptions"): {"url": HOOK},
    ("PATCH", "/v1/subscriptions/{sub}"): {"description": "changed"},
    ("POST", "/v1/keys"): {"name": "n", "scopes": ["read"]},
}


@pytest.mark.parametrize(("method", "path", "needed"), ENDPOINTS)
async def test_every_endpoint_answers_403_naming_the_scope_it_lacks(
    api: httpx.AsyncClient, method: str, path: str, needed: str
) -> None:
    # A key holding every scope but ``needed`` and what implies it.
    others = [s for s in SCOPES if s != "admin" and not grants([s], needed)]
    key = await make_key(api, *others)
    owner = await make_key(api, "jobs:write", "subscriptions:write")
    url = path.format(
        job=await submit(api, owner),
        sub=(await subscribe(api, owner))["id"],
        key=owner["id"],
    )

    response = await api.request(method, url, json=BODIES.get((method, path)), headers=as_key(key))

    error = assert_error(response, 403, "forbidden")
    assert repr(needed) in error["message"]
    assert error["details"] == {"missing_scope": needed}


@pytest.mark.parametrize(("method", "path", "needed"), ENDPOINTS)
async def test_a_key_with_just_that_scope_gets_past_the_check(
    api: httpx.AsyncClient, method: str, path: str, needed: str
) -> None:
    key = await make_key(api, needed)
    owner = await make_key(api, "jobs:write", "subscriptions:write")
    url = path.format(
        job=await submit(api, owner),
        sub=(await subscribe(api, owner))["id"],
        key=(await make_key(api, "read"))["id"],
    )

    response = await api.request(method, url, json=BODIES.get((method, path)), headers=as_key(key))

    if "{job}" in path or "{sub}" in path:
        # Past the scope check, at another key's job or subscription: not found for this key.
        assert_error(response, 404, "not_found")
    elif (method, path) == ("POST", "/v1/jobs"):
        assert response.status_code == 202, response.text  # past the check, kept for a retry
    else:
        assert response.status_code < 300, response.text


@pytest.mark.parametrize(
    ("held", "allowed", "refused"),
    [
        (["read"], ["jobs:read", "subscriptions:read"], ["jobs:write", "subscriptions:write"]),
        (["jobs:write"], ["jobs:write", "jobs:read"], ["subscriptions:read", "admin"]),
        (["subscriptions:write"], ["subscriptions:read"], ["jobs:read", "admin"]),
        (["jobs:read"], ["jobs:read"], ["jobs:write", "subscriptions:read"]),
        (["admin"], list(SCOPES), []),
    ],
)
def test_which_scopes_imply_which(held: list[str], allowed: list[str], refused: list[str]) -> None:
    for scope in allowed:
        assert grants(held, scope), (held, scope)
    for scope in refused:
        assert not grants(held, scope), (held, scope)


async def test_a_read_only_key_reads_everything_it_owns_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    reader = await make_key(api, "read")
    for path in ("/v1/jobs", "/v1/events", "/v1/subscriptions"):
        response = await api.get(path, headers=as_key(reader))
        assert response.status_code == 200, (path, response.text)
    for path, body in (("/v1/jobs", JOB), ("/v1/subscriptions", {"url": HOOK})):
        refused = await api.post(path, json=body, headers=as_key(reader))
        assert_error(refused, 403, "forbidden")
    assert (await api.get("/v1/jobs")).json()["data"] == []
    assert (await api.get("/v1/subscriptions")).json()["data"] == []


async def test_no_key_or_a_wrong_key_is_a_401(api: httpx.AsyncClient) -> None:
    assert_error(await send_without_key(api, "GET", "/v1/keys"), 401, "unauthorized")
    wrong = ADMIN_KEY[:-1] + ("0" if ADMIN_KEY[-1] != "0" else "1")
    assert_error(await api.get("/v1/keys", headers=as_key(wrong)), 401, "unauthorized")


# --- isolation ----------------------------------------------------------------------------------


async def test_a_key_cannot_read_or_change_another_keys_jobs_or_subscriptions(
    api: httpx.AsyncClient,
) -> None:
    alice = await make_key(api, "jobs:write", "subscriptions:write", name="alice")
    mallory = await make_key(api, "jobs:write", "subscriptions:write", name="mallory")
    job_id = await submit(api, alice)
    sub = await subscribe(api, alice)
    mallory_job = await submit(api, mallory)

    as_mallory = as_key(mallory)
    attempts = [
        await api.get(f"/v1/jobs/{job_id}", headers=as_mallory),
        await api.get(f"/v1/subscriptions/{sub['id']}", headers=as_mallory),
        await api.patch(
            f"/v1/subscriptions/{sub['id']}",
            json={"url": "http://127.0.0.1:9/stolen"},
            headers=as_mallory,
        ),
        await api.post(f"/v1/subscriptions/{sub['id']}/test", headers=as_mallory),
        await api.delete(f"/v1/subscriptions/{sub['id']}", headers=as_mallory),
    ]
    for response in attempts:
        error = assert_error(response, 404, "not_found")
        assert "alice" not in error["message"]

    # Each job's job.failed event comes once its retry has failed too: wait for both, so Alice's
    # is in the log to be hidden and Mallory's to be seen.
    for job in (job_id, mallory_job):
        await wait_for_job(api, job, {"failed"})
    jobs_seen = (await api.get("/v1/jobs", headers=as_mallory)).json()["data"]
    subs_seen = (await api.get("/v1/subscriptions", headers=as_mallory)).json()["data"]
    events_seen = (await api.get("/v1/events", headers=as_mallory)).json()["data"]
    assert [j["id"] for j in jobs_seen] == [mallory_job]
    assert subs_seen == []
    assert {e["data"]["id"] for e in events_seen} == {mallory_job}

    # Alice's things are untouched, and she and the admin still see them.
    mine = await api.get(f"/v1/subscriptions/{sub['id']}", headers=as_key(alice))
    assert mine.status_code == 200 and mine.json()["url"] == HOOK
    assert mine.json()["description"] == ""
    assert (await api.get(f"/v1/jobs/{job_id}", headers=as_key(alice))).status_code == 200
    everything = (await api.get("/v1/jobs")).json()["data"]
    assert {j["id"] for j in everything} == {job_id, mallory_job}


# --- the rate limit -----------------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(
    settings_factory: SettingsFactory,
) -> None:
    # One request per 100 s after a burst of 3: the bucket cannot refill during the test.
    settings = settings_factory(RATE_LIMIT="0.01", RATE_BURST="3")
    async with api_client(settings) as http:
        for _ in range(3):
            assert (await http.get("/v1/jobs")).status_code == 200
        limited = await http.get("/v1/jobs")
        other = await http.post("/v1/keys", json={"name": "n", "scopes": ["read"]})

        error = assert_error(limited, 429, "rate_limited")
        assert "rate" in error["message"]
        assert int(limited.headers["retry-after"]) >= 60
        assert_error(other, 429, "rate_limited")  # every endpoint counts against the key

        metrics = (await http.get("/metrics")).text
    assert "reelhook_rate_limited_requests_total 2.0" in metrics


async def test_each_key_has_its_own_allowance(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(RATE_LIMIT="0.01", RATE_BURST="2")
    async with api_client(settings) as http:
        reader = await make_key(http, "read")
        assert (await http.get("/v1/jobs")).status_code == 200
        assert_error(await http.get("/v1/jobs"), 429, "rate_limited")  # admin's burst is spent
        for _ in range(2):
            response = await http.get("/v1/jobs", headers=as_key(reader))
            assert response.status_code == 200, response.text
        assert_error(await http.get("/v1/jobs", headers=as_key(reader)), 429, "rate_limited")


async def test_a_rate_of_zero_turns_the_limit_off(settings_factory: SettingsFactory) -> None:
    async with api_client(settings_factory(RATE_LIMIT="0", RATE_BURST="1")) as http:
        for _ in range(30):
            assert (await http.get("/v1/jobs")).status_code == 200


def test_the_bucket_refills_at_the_rate_and_says_how_long_to_wait() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=4, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(4)] == [0.0] * 4
    assert limiter.take("k") == pytest.approx(0.5)
    assert limiter.take("other") == 0.0
    now[0] += 0.25  # half a token
    assert limiter.take("k") == pytest.approx(0.25)
    now[0] += 0.25
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] += 3600  # a long pause refills no more than the burst
    assert [limiter.take("k") for _ in range(4)] == [0.0] * 4
    assert limiter.take("k") > 0
    limiter.forget("k")
    assert limiter.take("k") == 0.0
