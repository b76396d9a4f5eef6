"""The web console in-process: sign-in, the session cookie, CSRF, scopes, and its forms.

The browser tests (``test_console_browser.py``) drive the same pages in Chromium; these check what a
browser cannot easily show — forged cookies and forms, and what each key is refused.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.access.callers import hash_key
from service.app.factory import create_app
from service.app.settings import Settings
from service.console.session import COOKIE, SessionCodec
from service.sim import Scenario, Simulator, create_sim_app
from tests.conftest import SettingsFactory, settings_for
from tests.helpers.callbacks import TOKENS
from tests.helpers.delivery import detail, exhausted, finished, replies_app, until_delivery
from tests.helpers.keys import new_key
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, in_process, served, stored

pytestmark = pytest.mark.anyio

SECRET_KEY = "test-secret-key-0123456789"
V3 = "trinetra/kling-v3"


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


@dataclass
class Reelhook:
    """A reelhook in-process: ``api`` sends the admin key; ``browser()`` makes cookie-only
    clients, as a browser would be."""

    api: httpx.AsyncClient
    app: Any
    settings: Settings

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://reelhook.test"
        )

    @asynccontextmanager
    async def signed_in(self, key: str = ADMIN_KEY) -> AsyncIterator[httpx.AsyncClient]:
        async with self.browser() as browser:
            answer = await sign_in(browser, key)
            assert answer.status_code == 303, answer.text
            yield browser

    async def new_key(self, *scopes: str) -> str:
        """A new API key with ``scopes``, made by the admin through the API."""
        return await new_key(self.api, *scopes)


async def sign_in(browser: httpx.AsyncClient, key: str, next_page: str = "") -> httpx.Response:
    form = await browser.get("/console/sign-in")
    assert form.status_code == 200, form.text
    return await browser.post(
        "/console/sign-in", data={"csrf": csrf_of(form), "api_key": key, "next": next_page}
    )


@asynccontextmanager
async def reelhook(settings: Settings) -> AsyncIterator[Reelhook]:
    async with in_process(settings) as (api, app):
        yield Reelhook(api, app, settings)


@pytest.fixture
async def service(settings_factory: SettingsFactory, dead_url: str) -> AsyncIterator[Reelhook]:
    async with reelhook(settings_factory(PUBLIC_URL=dead_url)) as found:
        yield found


@pytest.fixture
async def with_jobs(
    settings_factory: SettingsFactory, dead_url: str
) -> AsyncIterator[tuple[Reelhook, Callable[[float], None]]]:
    """reelhook whose Trinetra is a loopback simulator that never finishes a job, and a way to
    set the clock jobs are created by."""
    now = [1_800_000_000.0]

    def set_clock(value: float) -> None:
        now[0] = value

    sim = Simulator(Scenario(delay=3600))
    async with run_server(create_sim_app(sim)) as sim_url:
        settings = settings_factory(
            PUBLIC_URL=dead_url,
            TRINETRA_API_KEY="key-trinetra",
            TRINETRA_BASE_URL=f"{sim_url}/trinetra",
        )
        app = create_app(settings, clock=lambda: now[0])
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app),
                base_url="http://reelhook.test",
                headers={"X-API-Key": ADMIN_KEY},
            ) as api,
        ):
            yield Reelhook(api, manager.app, settings), set_clock


async def submit(api: httpx.AsyncClient, key: str = ADMIN_KEY, **job_input: Any) -> str:
    response = await api.post(
        "/v1/jobs",
        json={"model": V3, "input": {"prompt": "A lighthouse in a storm", **job_input}},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


# --- signing in ----------------------------------------------------------------------------------


async def test_a_page_asks_to_sign_in_and_comes_back_after_it(service: Reelhook) -> None:
    async with service.browser() as browser:
        page = await browser.get("/console/jobs?status=failed")
        assert page.status_code == 303
        target = "/console/sign-in?next=%2Fconsole%2Fjobs%3Fstatus%3Dfailed"
        assert page.headers["location"] == target
        answer = await sign_in(browser, ADMIN_KEY, "/console/jobs?status=failed")
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/console/jobs?status=failed"
        jobs = await browser.get("/console/jobs?status=failed")
        assert jobs.status_code == 200
        assert "<h1>Jobs</h1>" in jobs.text


async def test_sign_in_goes_only_to_console_pages(service: Reelhook) -> None:
    async with service.browser() as browser:
        for target in ("https://evil.example/", "//evil.example/console/", "/v1/jobs", ""):
            answer = await sign_in(browser, ADMIN_KEY, target)
            assert answer.headers["location"] == "/console/jobs", target


async def test_a_wrong_key_does_not_sign_in(service: Reelhook) -> None:
    async with service.browser() as browser:
        answer = await sign_in(browser, "rh_not_a_key")
        assert answer.status_code == 401
        assert "That API key is not valid." in answer.text
        assert (await browser.get("/console/jobs")).status_code == 303


async def test_the_cookie_is_httponly_samesite_strict_and_holds_no_key(service: Reelhook) -> None:
    async with service.browser() as browser:
        answer = await sign_in(browser, ADMIN_KEY)
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
        assert "secure" not in attributes  # plain http here; see the https test below
        assert ADMIN_KEY not in cookie
        page = await browser.get("/console/jobs")
        assert page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_the_cookie_is_secure_when_the_public_url_is_https(
    settings_factory: SettingsFactory,
) -> None:
    async with (
        reelhook(settings_factory(PUBLIC_URL="https://reelhook.example")) as found,
        found.browser() as browser,
    ):
        answer = await sign_in(browser, ADMIN_KEY)
        assert "secure" in answer.headers["set-cookie"].lower().split("; ")


async def test_sign_out_ends_the_session(service: Reelhook) -> None:
    async with service.signed_in() as browser:
        jobs = await browser.get("/console/jobs")
        out = await browser.post("/console/sign-out", data={"csrf": csrf_of(jobs)})
        assert out.status_code == 303
        assert out.headers["location"] == "/console/sign-in?notice=signed-out"
        assert (await browser.get("/console/jobs")).status_code == 303


async def test_sign_out_revokes_the_session_on_the_server(service: Reelhook) -> None:
    """A copy of the cookie taken before sign-out (and the CSRF token issued with it) no longer
    works after it, though it is still validly signed and within its 12 hours."""
    async with service.signed_in() as browser:
        jobs = await browser.get("/console/jobs")
        token = csrf_of(jobs)
        copied = dict(browser.cookies)
        out = await browser.post("/console/sign-out", data={"csrf": token})
        assert out.status_code == 303
    async with service.browser() as thief:
        for name, value in copied.items():
            thief.cookies.set(name, value, domain="reelhook.test", path="/console")
        page = await thief.get("/console/jobs")
        sub_id = "sub_x"
        form = await thief.post(f"/console/subscriptions/{sub_id}/delete", data={"csrf": token})
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/sign-in")
    assert form.status_code in (303, 403)
    assert "sign-in" in form.headers.get("location", "/console/sign-in")


async def stolen(service: Reelhook, cookies: dict[str, str]) -> httpx.AsyncClient:
    """A browser holding a copy of someone's cookies."""
    thief = service.browser()
    for name, value in cookies.items():
        thief.cookies.set(name, value, domain="reelhook.test", path="/console")
    return thief


async def refused_everything(service: Reelhook, cookies: dict[str, str], token: str) -> None:
    """The copied cookie opens no page and its CSRF token submits no form: nothing is stored."""
    async with await stolen(service, cookies) as thief:
        page = await thief.get("/console/jobs")
        form = await thief.post(
            "/console/subscriptions", data={"url": "http://127.0.0.1:9/hook", "csrf": token}
        )
    assert page.status_code == 303, page.text
    assert page.headers["location"].startswith("/console/sign-in")
    assert form.status_code == 303, form.text
    assert form.headers["location"].startswith("/console/sign-in")
    listed = await service.api.get("/v1/subscriptions")
    assert listed.json()["data"] == []


async def test_a_sign_out_holds_across_a_restart(settings_factory: SettingsFactory) -> None:
    """Signing out is recorded in the store: after a restart the old cookie and its CSRF token
    are still refused, while a session that did not sign out still works."""
    settings = settings_factory()
    async with (
        reelhook(settings) as first,
        first.signed_in() as browser,
        first.signed_in() as colleague,
    ):
        token = csrf_of(await browser.get("/console/subscriptions"))
        copied = dict(browser.cookies)
        kept = dict(colleague.cookies)
        out = await browser.post("/console/sign-out", data={"csrf": token})
        assert out.status_code == 303
    async with reelhook(settings) as again:
        await refused_everything(again, copied, token)
        async with await stolen(again, kept) as colleague:
            assert (await colleague.get("/console/jobs")).status_code == 200
    # What the store keeps names no session: only a digest of its nonce.
    (nonce_hash,) = [row[0] for row in stored(settings, "SELECT nonce_hash FROM console_sign_outs")]
    assert all(nonce_hash not in value for value in copied.values())


async def test_a_sign_out_on_one_node_holds_on_another(pg_database: str, tmp_path: Path) -> None:
    """Two reelhook nodes on one PostgreSQL database: a session signed out on one is refused by
    the other at once (an in-memory record would leave the other node accepting it)."""
    a = settings_for(tmp_path / "a", DATABASE_URL=pg_database, PUBLIC_URL="http://127.0.0.1:9")
    b = settings_for(tmp_path / "b", DATABASE_URL=pg_database, PUBLIC_URL="http://127.0.0.1:9")
    async with reelhook(a) as node_a, reelhook(b) as node_b:
        async with node_a.signed_in() as browser:
            token = csrf_of(await browser.get("/console/subscriptions"))
            copied = dict(browser.cookies)
            # The same cookie works on both nodes (they share the secret keys) ...
            async with await stolen(node_b, copied) as elsewhere:
                assert (await elsewhere.get("/console/jobs")).status_code == 200
            out = await browser.post("/console/sign-out", data={"csrf": token})
            assert out.status_code == 303
        # ... until it is signed out on one of them.
        await refused_everything(node_b, copied, token)
        await refused_everything(node_a, copied, token)


# --- forged cookies and forms --------------------------------------------------------------------


async def test_a_tampered_cookie_is_no_session(service: Reelhook) -> None:
    async with service.signed_in() as browser:
        genuine = browser.cookies[COOKIE]
        assert (await browser.get("/console/jobs")).status_code == 200
        payload, _, signature = genuine.rpartition(".")
        # A middle character: the last one's low bits are base64 padding, which decoding ignores.
        flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
        forged = {
            "signature changed": f"{payload}.{flipped}",
            "signed with another key": SessionCodec(("another-secret-key-0123",)).dumps(
                SessionCodec.new(hash_key(ADMIN_KEY))
            ),
            "garbage": "not-a-cookie",
        }
        for reason, value in forged.items():
            browser.cookies.clear()
            browser.cookies.set(COOKIE, value, domain="reelhook.test", path="/console")
            page = await browser.get("/console/jobs")
            assert page.status_code == 303, reason
            assert page.headers["location"].startswith("/console/sign-in"), reason


async def test_a_session_for_a_key_that_is_gone_ends(service: Reelhook) -> None:
    unknown = SessionCodec((SECRET_KEY,)).dumps(SessionCodec.new(hash_key("rh_deleted_key")))
    async with service.browser() as browser:
        browser.cookies.set(COOKIE, unknown, domain="reelhook.test", path="/console")
        page = await browser.get("/console/jobs")
        assert page.headers["location"] == "/console/sign-in?notice=session-ended"


async def test_a_form_without_this_sessions_token_is_refused(service: Reelhook) -> None:
    sink = "http://127.0.0.1:9/hook"
    async with service.signed_in() as browser, service.signed_in() as other:
        async with service.browser() as anonymous:
            anonymous_token = csrf_of(await anonymous.get("/console/sign-in"))
        other_token = csrf_of(await other.get("/console/subscriptions"))
        for reason, fields in {
            "no token": {},
            "empty token": {"csrf": ""},
            "another session's token": {"csrf": other_token},
            "a token from before sign-in": {"csrf": anonymous_token},
            "a forged token": {"csrf": "abc.def"},
        }.items():
            answer = await browser.post("/console/subscriptions", data={"url": sink, **fields})
            assert answer.status_code == 403, reason
            assert "reload the page" in answer.text, reason
        listed = await service.api.get("/v1/subscriptions")
        assert listed.json()["data"] == []
        # The same form with its own token goes through.
        own = csrf_of(await browser.get("/console/subscriptions"))
        created = await browser.post("/console/subscriptions", data={"url": sink, "csrf": own})
        # Created, and redirected (a reload must not create it again): the secret is on the GET.
        assert created.status_code == 303, created.text
        shown = await browser.get(created.headers["location"])
        assert shown.status_code == 200 and "whsec_" in shown.text


async def test_sign_in_itself_needs_the_token(service: Reelhook) -> None:
    async with service.browser() as browser:
        await browser.get("/console/sign-in")
        answer = await browser.post("/console/sign-in", data={"api_key": ADMIN_KEY})
        assert answer.status_code == 403
        assert COOKIE not in answer.headers.get("set-cookie", "")


async def test_a_form_must_be_urlencoded(service: Reelhook) -> None:
    async with service.signed_in() as browser:
        token = csrf_of(await browser.get("/console/subscriptions"))
        answer = await browser.post(
            "/console/subscriptions", json={"csrf": token, "url": "http://127.0.0.1:9/"}
        )
        assert answer.status_code == 400
        assert "x-www-form-urlencoded" in answer.text


# --- what a key may see and do -------------------------------------------------------------------


async def test_a_key_sees_only_its_own_jobs_and_subscriptions(
    with_jobs: tuple[Reelhook, Callable[[float], None]],
) -> None:
    service, _ = with_jobs
    theirs = await submit(service.api)
    their_sub = await service.api.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/a"})
    their_sub_id = their_sub.json()["id"]
    key = await service.new_key("jobs:read", "jobs:write", "subscriptions:read")
    mine = await submit(service.api, key)
    async with service.signed_in(key) as browser:
        listing = await browser.get("/console/jobs")
        assert mine in listing.text and theirs not in listing.text
        assert (await browser.get(f"/console/jobs/{mine}")).status_code == 200
        hidden = await browser.get(f"/console/jobs/{theirs}")
        assert hidden.status_code == 404 and theirs in hidden.text  # named from the URL only
        subs = await browser.get("/console/subscriptions")
        assert subs.status_code == 200 and their_sub_id not in subs.text
        assert "New subscription" not in subs.text  # no subscriptions:write
        assert (await browser.get(f"/console/subscriptions/{their_sub_id}")).status_code == 404
    async with service.signed_in() as admin:
        listing = await admin.get("/console/jobs")
        assert mine in listing.text and theirs in listing.text


async def test_a_key_without_the_scope_is_refused_and_nothing_changes(service: Reelhook) -> None:
    key = await service.new_key("jobs:read")
    created = await service.api.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/a"})
    sub_id = created.json()["id"]
    async with service.signed_in(key) as browser:
        jobs = await browser.get("/console/jobs")
        assert jobs.status_code == 200
        token = csrf_of(jobs)
        refused = await browser.get("/console/subscriptions")
        assert refused.status_code == 403
        assert "subscriptions:read" in refused.text
        attempts = [
            ("/console/subscriptions", {"url": "http://127.0.0.1:9/b"}),
            (f"/console/subscriptions/{sub_id}/status", {"status": "disabled"}),
            (f"/console/subscriptions/{sub_id}/delete", {}),
        ]
        for path, fields in attempts:
            answer = await browser.post(path, data={"csrf": token, **fields})
            assert answer.status_code == 403, path
    listed = (await service.api.get("/v1/subscriptions")).json()["data"]
    assert [(s["id"], s["status"]) for s in listed] == [(sub_id, "active")]


# --- jobs ----------------------------------------------------------------------------------------


async def test_jobs_filter_by_time_in_the_console_and_the_api(
    with_jobs: tuple[Reelhook, Callable[[float], None]],
) -> None:
    service, set_clock = with_jobs
    set_clock(1_800_000_000.0)  # 2027-01-15T08:00:00Z
    early = await submit(service.api)
    set_clock(1_800_003_600.0)  # an hour later
    late = await submit(service.api)
    api = await service.api.get("/v1/jobs", params={"since": "2027-01-15T08:30:00Z"})
    assert [job["id"] for job in api.json()["data"]] == [late]
    api = await service.api.get("/v1/jobs", params={"until": "2027-01-15T08:30:00"})
    assert [job["id"] for job in api.json()["data"]] == [early]
    async with service.signed_in() as browser:
        page = await browser.get("/console/jobs", params={"since": "2027-01-15T08:30"})
        assert late in page.text and early not in page.text
        assert 'value="2027-01-15T08:30"' in page.text  # the filter stays filled in
        bad = await browser.get("/console/jobs", params={"since": "yesterday"})
        assert bad.status_code == 422
        assert "is not an ISO 8601 time" in bad.text and "since:" in bad.text
    refused = await service.api.get("/v1/jobs", params={"until": "soon"})
    assert refused.status_code == 422


async def test_jobs_page_through_with_a_cursor(
    with_jobs: tuple[Reelhook, Callable[[float], None]],
) -> None:
    service, _ = with_jobs
    ids = [await submit(service.api) for _ in range(3)]
    async with service.signed_in() as browser:
        first = await browser.get("/console/jobs", params={"limit": "2"})
        assert ids[2] in first.text and ids[1] in first.text and ids[0] not in first.text
        found = re.search(r'href="/console/jobs(\?[^"]+)" rel="next"', first.text)
        assert found, first.text
        second = await browser.get("/console/jobs" + found.group(1).replace("&amp;", "&"))
        assert ids[0] in second.text and ids[1] not in second.text
        assert 'href="/console/jobs">First page</a>' in second.text
        assert "First page" not in first.text
        none = await browser.get("/console/jobs", params={"status": "canceled"})
        assert "No jobs match these filters." in none.text


async def test_the_job_page_shows_input_timeline_and_cost(
    with_jobs: tuple[Reelhook, Callable[[float], None]],
) -> None:
    service, _ = with_jobs
    job_id = await submit(service.api, duration=10)
    async with service.signed_in() as browser:
        page = await browser.get(f"/console/jobs/{job_id}")
        assert page.status_code == 200
        assert "A lighthouse in a storm" in page.text
        assert "job.submitted" in page.text
        assert 'data-follow-job="' + job_id in page.text  # not terminal: the page follows it
        job = (await service.api.get(f"/v1/jobs/{job_id}")).json()
        assert f"estimated {job['cost']['estimated']} {job['cost']['unit']}" in page.text


async def test_the_job_page_shows_the_job_s_notices(
    with_jobs: tuple[Reelhook, Callable[[float], None]],
) -> None:
    """Issue 15: an unknown status word and a success after a failure are shown, with the late
    result's video link."""
    service, _ = with_jobs
    job_id = await submit(service.api)
    job = (await service.api.get(f"/v1/jobs/{job_id}")).json()
    url = f"/v1/callbacks/trinetra/{TOKENS.callback(job_id, 'trinetra')}"
    late = "https://cdn.example/late<b>.mp4"
    for document in (
        {"id": job["provider_job_id"], "status": "rendering"},
        {"id": job["provider_job_id"], "status": "failed", "error": "GPU fell over"},
        {
            "id": job["provider_job_id"],
            "status": "succeeded",
            "output": {"outputs": [{"url": late, "type": "video"}]},
        },
    ):
        answer = await service.api.post(url, json=document)
        assert answer.status_code == 200, answer.text
    async with service.signed_in() as browser:
        page = await browser.get(f"/console/jobs/{job_id}")
    assert page.status_code == 200
    assert "Notices" in page.text
    assert "unknown_status" in page.text and "&#39;rendering&#39;" in page.text
    assert "late_result" in page.text
    assert 'href="https://cdn.example/late&lt;b&gt;.mp4"' in page.text  # escaped, still a link


# --- subscriptions -------------------------------------------------------------------------------


async def test_subscription_forms_go_through_the_api_validation(service: Reelhook) -> None:
    async with service.signed_in() as browser:
        token = csrf_of(await browser.get("/console/subscriptions"))
        bad_url = await browser.post(
            "/console/subscriptions", data={"csrf": token, "url": "ftp://example.org/"}
        )
        assert bad_url.status_code == 422
        assert "url: must be an http or https URL" in bad_url.text
        assert 'value="ftp://example.org/"' in bad_url.text  # what was typed is kept
        bad_header = await browser.post(
            "/console/subscriptions",
            data={"csrf": token, "url": "http://127.0.0.1:9/", "headers": "Content-Type: x"},
        )
        assert bad_header.status_code == 422
        assert "is set by reelhook itself" in bad_header.text
        no_colon = await browser.post(
            "/console/subscriptions",
            data={"csrf": token, "url": "http://127.0.0.1:9/", "headers": "X-A: 1\nX-B"},
        )
        assert "headers: line 2 is not" in no_colon.text
        assert (await service.api.get("/v1/subscriptions")).json()["data"] == []

        created = await browser.post(
            "/console/subscriptions",
            data={
                "csrf": token,
                "url": "http://127.0.0.1:9/hook",
                "event_types": ["job.succeeded", "job.failed"],
                "models": [V3],
                "headers": "X-N8N-Auth: s3cret\n\nX-Team: video",
                "description": "n8n",
            },
        )
        assert created.status_code == 303  # redirected: a reload does not create it again
        shown = await browser.get(created.headers["location"])
        assert shown.status_code == 200
        secret = re.search(r"whsec_[A-Za-z0-9+/=]+", shown.text)
        assert secret, shown.text
        # Shown once: the same page again no longer has it.
        again = await browser.get(created.headers["location"])
        assert not re.search(r"whsec_[A-Za-z0-9+/=]+", again.text)
    stored = (await service.api.get("/v1/subscriptions")).json()["data"]
    assert len(stored) == 1
    assert stored[0]["event_types"] == ["job.succeeded", "job.failed"]
    assert stored[0]["models"] == [V3]
    assert stored[0]["headers"] == {"X-N8N-Auth": "********", "X-Team": "********"}
    assert stored[0]["description"] == "n8n"


async def test_the_subscription_form_sets_filter_template_scheme_and_ordering(
    service: Reelhook,
) -> None:
    async with service.signed_in() as browser:
        page = await browser.get("/console/subscriptions")
        token = csrf_of(page)
        assert '<option value="text/plain">text/plain</option>' in page.text
        bad_filter = await browser.post(
            "/console/subscriptions",
            data={"csrf": token, "url": "http://127.0.0.1:9/", "filter": "{nope"},
        )
        assert bad_filter.status_code == 422 and "filter: is not JSON" in bad_filter.text
        unknown_field = await browser.post(
            "/console/subscriptions",
            data={
                "csrf": token,
                "url": "http://127.0.0.1:9/",
                "filter": '{"path": "data.colour", "eq": "red"}',
            },
        )
        assert unknown_field.status_code == 422
        assert "filter.path" in unknown_field.text and "data.colour" in unknown_field.text
        assert (await service.api.get("/v1/subscriptions")).json()["data"] == []
        created = await browser.post(
            "/console/subscriptions",
            data={
                "csrf": token,
                "url": "http://127.0.0.1:9/chat",
                "event_types": ["job.succeeded"],
                "filter": '{"path": "data.metadata.channel", "eq": "bots"}',
                "template": "{{ type }} {{ data.id }}",
                "content_type": "text/plain",
                "signature_scheme": "v1a",
                "ordering": "fifo",
            },
        )
        assert created.status_code == 303, created.text  # POST-redirect-GET
        shown = await browser.get(created.headers["location"])
        assert "whsk_" not in shown.text and "whsec_" not in shown.text
        assert 'id="public-key">whpk_' in shown.text
        assert "FIFO: one delivery at a time" in shown.text
        assert '<dd id="fifo-queued">0</dd>' in shown.text
    [stored] = (await service.api.get("/v1/subscriptions")).json()["data"]
    assert stored["filter"] == {"path": "data.metadata.channel", "eq": "bots"}
    assert (stored["template"], stored["content_type"]) == (
        "{{ type }} {{ data.id }}",
        "text/plain",
    )
    assert (stored["signature_scheme"], stored["ordering"]) == ("v1a", "fifo")


async def test_edit_keeps_headers_unless_asked_and_toggles_status(service: Reelhook) -> None:
    created = await service.api.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/a", "headers": {"X-Auth": "t0ken"}, "models": [V3]},
    )
    sub_id = created.json()["id"]
    path = f"/console/subscriptions/{sub_id}"
    async with service.signed_in() as browser:
        page = await browser.get(path)
        token = csrf_of(page)
        assert "X-Auth" in page.text and "t0ken" not in page.text
        saved = await browser.post(
            path, data={"csrf": token, "url": "http://127.0.0.1:9/b", "event_types": "ping"}
        )
        assert saved.status_code == 303 and saved.headers["location"] == f"{path}?notice=saved"
        sub = (await service.api.get(f"/v1/subscriptions/{sub_id}")).json()
        assert sub["url"] == "http://127.0.0.1:9/b"
        assert sub["event_types"] == ["ping"] and sub["models"] == []
        assert sub["headers"] == {"X-Auth": "********"}
        await browser.post(
            path, data={"csrf": token, "url": "http://127.0.0.1:9/b", "clear_headers": "1"}
        )
        assert (await service.api.get(f"/v1/subscriptions/{sub_id}")).json()["headers"] == {}

        off = await browser.post(f"{path}/status", data={"csrf": token, "status": "disabled"})
        assert off.headers["location"] == f"{path}?notice=disabled"
        assert (await service.api.get(f"/v1/subscriptions/{sub_id}")).json()["status"] == (
            "disabled"
        )
        ping = await browser.post(f"{path}/test", data={"csrf": token})
        assert ping.status_code == 409  # the API's rule: enable it first
        on = await browser.post(f"{path}/status", data={"csrf": token, "status": "active"})
        assert on.headers["location"] == f"{path}?notice=enabled"
        ping = await browser.post(f"{path}/test", data={"csrf": token})
        assert ping.headers["location"] == f"{path}?notice=ping-sent"
        events = (await service.api.get("/v1/events", params={"type": "ping"})).json()["data"]
        assert [event["data"]["subscription_id"] for event in events] == [sub_id]

        gone = await browser.post(f"{path}/delete", data={"csrf": token})
        assert gone.headers["location"] == "/console/subscriptions?notice=deleted"
        assert (await service.api.get(f"/v1/subscriptions/{sub_id}")).status_code == 404


async def test_a_failed_job_shows_its_error_and_the_callback(
    settings_factory: SettingsFactory,
) -> None:
    sim = Simulator(Scenario(delay=0.1, outcome="fail"))
    sock = loopback_socket()
    async with run_server(create_sim_app(sim)) as sim_url:
        settings = settings_factory(
            PUBLIC_URL=url_of(sock),
            TRINETRA_API_KEY="key-trinetra",
            TRINETRA_BASE_URL=f"{sim_url}/trinetra",
        )
        sink = Sink()
        async with run_server(sink.app()) as sink_url, served(settings, sock) as api:
            await api.post("/v1/subscriptions", json={"url": f"{sink_url}/hook"})
            job_id = await submit(api)
            await sink.wait_for(lambda s: any(b"job.failed" in r.body for r in s.received))
            async with httpx.AsyncClient(base_url=url_of(sock)) as browser:
                await sign_in(browser, ADMIN_KEY)
                page = await browser.get(f"/console/jobs/{job_id}")
    assert page.status_code == 200
    assert 'status-failed" id="job-status"' in page.text
    assert "data-follow-job" not in page.text  # terminal: nothing left to follow
    error = page.text[page.text.index('id="h-error"') :]
    assert "content_policy" in error
    timeline = page.text[page.text.index('id="h-timeline"') :]
    assert timeline.index("job.submitted") < timeline.index("callback from trinetra")
    assert timeline.index("callback from trinetra") < timeline.index("job.failed")


# --- deliveries ----------------------------------------------------------------------------------


@pytest.fixture
async def failing(service: Reelhook) -> AsyncIterator[tuple[Reelhook, str, str]]:
    """A subscription whose endpoint answers 500 with a reason, and its ping delivery, failed
    after every scheduled attempt."""
    async with run_server(replies_app()) as sink_url:
        created = await service.api.post("/v1/subscriptions", json={"url": f"{sink_url}/text"})
        sub_id = created.json()["id"]
        _, row = await exhausted(service.api, sub_id)
        yield service, sub_id, row["id"]


async def test_a_failed_delivery_shows_each_attempt_and_resends(
    failing: tuple[Reelhook, str, str],
) -> None:
    service, sub_id, delivery_id = failing
    async with service.signed_in() as browser:
        listing = await browser.get("/console/deliveries", params={"subscription": sub_id})
        assert listing.status_code == 200
        assert delivery_id in listing.text and "status-failed" in listing.text
        page = await browser.get(f"/console/deliveries/{delivery_id}")
        assert page.text.count("HTTP 500") == 3
        assert "upstream said: no — try later" in page.text
        assert "&#34;type&#34;: &#34;ping&#34;" in page.text  # the payload, escaped
        assert 'http-equiv="refresh"' not in page.text  # finished: nothing to follow
        answer = await browser.post(
            f"/console/deliveries/{delivery_id}/retry", data={"csrf": csrf_of(page)}
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/console/deliveries/{delivery_id}?notice=resent"
    row = await until_delivery(
        service.api, (await detail(service.api, delivery_id))["event_id"], finished
    )
    assert row["attempt_count"] == 4


async def test_recover_from_the_subscription_page(failing: tuple[Reelhook, str, str]) -> None:
    service, sub_id, delivery_id = failing
    path = f"/console/subscriptions/{sub_id}"
    async with service.signed_in() as browser:
        page = await browser.get(path)
        assert "Last failure" in page.text and "HTTP 500" in page.text
        token = csrf_of(page)
        for since, problem in (("", "since: is required"), ("2999-01-01T00:00", "in the future")):
            refused = await browser.post(f"{path}/recover", data={"csrf": token, "since": since})
            assert refused.status_code == 422 and problem in refused.text, refused.text
        answer = await browser.post(
            f"{path}/recover", data={"csrf": token, "since": "2020-01-01T00:00:00"}
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == (
            f"/console/deliveries?subscription={sub_id}&recovered=1"
        )
        shown = await browser.get(answer.headers["location"])
        assert "1 failed delivery is queued to be sent again." in shown.text
    event_id = (await detail(service.api, delivery_id))["event_id"]
    row = await until_delivery(
        service.api, event_id, lambda r: r["attempt_count"] == 4 and finished(r)
    )
    assert row["status"] == "failed"  # one more attempt, not a new schedule


async def test_rotate_shows_the_new_secret_once(service: Reelhook) -> None:
    created = await service.api.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/a"})
    sub_id, old = created.json()["id"], created.json()["secret"]
    async with service.signed_in() as browser:
        page = await browser.get(f"/console/subscriptions/{sub_id}")
        assert "whsec_" not in page.text
        posted = await browser.post(
            f"/console/subscriptions/{sub_id}/rotate-secret", data={"csrf": csrf_of(page)}
        )
        # Redirected (a reload must not rotate again); the GET shows the secret, once.
        assert posted.status_code == 303
        rotated = await browser.get(posted.headers["location"])
        found = re.search(r'id="new-secret">(whsec_[^<]+)<', rotated.text)
        assert found and found.group(1) != old
        assert "Old secret signs until" in rotated.text
        assert "whsec_" not in (await browser.get(f"/console/subscriptions/{sub_id}")).text
        assert "whsec_" not in (await browser.get(posted.headers["location"])).text
    stored = (await service.api.get(f"/v1/subscriptions/{sub_id}")).json()
    assert stored["previous_secret_expires_at"] is not None


async def test_another_keys_deliveries_stay_hidden(failing: tuple[Reelhook, str, str]) -> None:
    service, sub_id, delivery_id = failing
    key = await service.new_key("subscriptions:read", "subscriptions:write")
    async with service.signed_in(key) as browser:
        listing = await browser.get("/console/deliveries")
        assert listing.status_code == 200 and delivery_id not in listing.text
        assert "No deliveries" in listing.text
        assert (await browser.get(f"/console/deliveries/{delivery_id}")).status_code == 404
        token = csrf_of(listing)
        retry = await browser.post(f"/console/deliveries/{delivery_id}/retry", data={"csrf": token})
        assert retry.status_code == 404
        recover = await browser.post(
            f"/console/subscriptions/{sub_id}/recover", data={"csrf": token, "since": "2020-01-01"}
        )
        assert recover.status_code == 404
    assert (await detail(service.api, delivery_id))["attempt_count"] == 3


async def test_revoking_the_key_ends_its_console_session(service: Reelhook) -> None:
    created = await service.api.post("/v1/keys", json={"name": "temp", "scopes": ["jobs:read"]})
    key_id, key = created.json()["id"], created.json()["key"]
    async with service.signed_in(key) as browser:
        assert (await browser.get("/console/jobs")).status_code == 200
        assert (await service.api.delete(f"/v1/keys/{key_id}")).status_code in (200, 204)
        page = await browser.get("/console/jobs")
        assert page.headers["location"] == "/console/sign-in?notice=session-ended"


def test_only_http_output_urls_become_links_or_video_sources() -> None:
    """The job page shows a provider output URL with a ``javascript:`` scheme as text, never as a
    link or a video source (the page's CSP would block it; it is not relied on)."""
    from service.console import templates

    hostile = "javascript:alert(document.cookie)"
    safe = "https://cdn.example/v.mp4"
    job = {
        "id": "job_1",
        "status": "succeeded",
        "model": "trinetra/kling-v3",
        "provider": "trinetra",
        "provider_job_id": "p_1",
        "created_at": 1.0,
        "submitted_at": None,
        "completed_at": None,
        "cost": {"estimated": 1, "charged": None, "unit": "credits"},
        "input": {},
        "metadata": {},
        "error": None,
        "outputs": [
            {"type": "video", "url": hostile},
            {"type": "video", "url": safe},
        ],
    }
    body = (
        templates()
        .env.get_template("job.html")
        .render(
            job=job,
            terminal=True,
            moments=[],
            live=None,
            section="jobs",
            csrf="t",
            caller=None,
            may=lambda scope: True,
            notice=None,
            request=None,
        )
    )
    assert 'href="javascript:' not in body and 'src="javascript:' not in body
    assert "not a web link): <code>javascript:alert(document.cookie)</code>" in body
    assert f'src="{safe}"' in body and f'href="{safe}"' in body
