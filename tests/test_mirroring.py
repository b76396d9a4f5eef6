"""Output mirroring (docs/contract.md §6): provider-hosted videos copied into the blob store.

reelhook runs under uvicorn with its in-process simulator. Where a test plays the provider itself
(its simulator's callbacks are pushed an hour out), the output URLs point at a loopback file
server whose answers the test scripts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from service.app.settings import Settings, SettingsError, load_settings
from service.core.models import Output
from service.core.tokens import Tokens
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import SECRET_KEY, TOKENS, encode
from tests.helpers.delivery import subscribe
from tests.helpers.files import minted_ago, tamper
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import api_client, served, stored_dicts

pytestmark = pytest.mark.anyio

SAMPLE_MP4 = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()
V3 = "trinetra/kling-v3"
APIFRAME = "apiframe/kling-2.5-turbo-pro"


@dataclass
class Files:
    """A provider's file host on loopback: ``/{name}`` answers as the name says, and counts."""

    requests: Counter[str] = field(default_factory=Counter)
    hang: bool = False
    hanging: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def serve(request: Request) -> Response:
            name = request.path_params["name"]
            self.requests[name] += 1
            self.arrived.set()
            self.arrived = anyio.Event()
            if self.hang:
                return StreamingResponse(self._stalled(), media_type="video/mp4")
            return self.answer(name, request)

        return Starlette(routes=[Route("/{name}", serve)])

    async def _stalled(self) -> AsyncIterator[bytes]:
        """The first part of the video, then nothing until released (10 s at most)."""
        yield SAMPLE_MP4[:2000]
        self.hanging += 1
        self.arrived.set()
        self.arrived = anyio.Event()
        try:
            with anyio.move_on_after(10):
                await self.release.wait()
        finally:
            self.hanging -= 1
        yield SAMPLE_MP4[2000:]

    def answer(self, name: str, request: Request) -> Response:
        if name.startswith("status-"):
            return Response(b"nope", status_code=int(name.removeprefix("status-")))
        if name == "flaky" and self.requests[name] == 1:
            return Response(b"try again", status_code=503)
        if name == "redirect":
            return RedirectResponse(request.query_params["to"], status_code=302)
        media_type = {
            "html": "text/html; charset=utf-8",
            "octet": "application/octet-stream",
            "text-mp4": "text/plain",
        }.get(name, "video/mp4")
        content = {"html": b"<html>a login page</html>", "empty": b""}.get(name, SAMPLE_MP4)
        return Response(content, media_type=media_type)

    async def wait_for(self, predicate: Callable[[Files], bool], within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not predicate(self):
                await self.arrived.wait()


async def create(http: httpx.AsyncClient, model: str = V3) -> dict[str, Any]:
    response = await http.post(
        "/v1/jobs", json={"model": model, "input": {"prompt": "A lighthouse in a storm"}}
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def succeeded_document(provider_job_id: str, *urls: str) -> bytes:
    """Trinetra's terminal job document (docs/providers.md §1) with these output URLs."""
    outputs = [{"url": url, "type": "video"} for url in urls]
    return encode(
        {
            "id": provider_job_id,
            "model": "kling-v3",
            "status": "succeeded",
            "output": {"outputs": outputs},
            "credits_charged": 10,
        }
    )


async def finish(http: httpx.AsyncClient, job: dict[str, Any], *urls: str) -> None:
    """Deliver the job's terminal callback as Trinetra would."""
    token = TOKENS.callback(job["id"], "trinetra")
    response = await http.post(
        f"/v1/callbacks/trinetra/{token}", content=succeeded_document(job["provider_job_id"], *urls)
    )
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"


async def job_events(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await http.get("/v1/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [e for e in response.json()["data"] if e["data"].get("id") == job_id]


async def succeeded_event(
    http: httpx.AsyncClient, job_id: str, within: float = 10.0
) -> dict[str, Any]:
    """Wait for the job's ``job.succeeded`` event in the log; there must be exactly one."""
    with anyio.fail_after(within):
        while True:
            found = [e for e in await job_events(http, job_id) if e["type"] == "job.succeeded"]
            if found:
                assert len(found) == 1, found
                return found[0]
            await anyio.sleep(0.02)


def mirror_rows(settings: Settings) -> list[dict[str, Any]]:
    return stored_dicts(settings, "SELECT * FROM mirrors ORDER BY job_id, output_index")


def digest_of(mirror_url: str) -> str:
    digest, _ = Tokens([SECRET_KEY]).verify_file(mirror_url.rsplit("/", 1)[1], 3600)
    return digest


# --- the simulator's videos ----------------------------------------------------------------------


@pytest.mark.slow
async def test_the_simulators_mp4_is_mirrored_and_served_by_a_signed_link(
    settings_factory: SettingsFactory,
) -> None:
    sink = Sink()
    sock = loopback_socket()
    public_url = url_of(sock)
    settings = settings_factory(PUBLIC_URL=public_url, SIM_DELAY="0.3", MIRROR_OUTPUTS="true")
    async with run_server(sink.app()) as sink_url, served(settings, sock) as http:
        sub = await subscribe(http, f"{sink_url}/hook", event_types=["job.succeeded"])
        jobs = [await create(http, V3), await create(http, APIFRAME)]
        await sink.wait_for(lambda s: len(s.on("/hook")) >= 2)
        documents = {job["id"]: (await http.get(f"/v1/jobs/{job['id']}")).json() for job in jobs}
        logged = {job["id"]: await job_events(http, job["id"]) for job in jobs}
        async with httpx.AsyncClient() as anonymous:
            answers = []
            for delivery in sink.on("/hook"):
                event = Webhook(sub["secret"]).verify(delivery.body, delivery.headers)
                (output,) = event["data"]["outputs"]
                link = output["mirror_url"]
                answers.append(
                    (
                        event,
                        await anonymous.get(output["url"]),
                        await anonymous.get(link),
                        await anonymous.get(link, headers={"Range": "bytes=100-1123"}),
                        await anonymous.get(tamper(link, len(link) - 3)),
                        await anonymous.get(
                            f"{public_url}/v1/files/{minted_ago(8 * 86400, digest_of(link))}"
                        ),
                    )
                )

    assert {event["data"]["id"] for event, *_ in answers} == {job["id"] for job in jobs}
    for event, provider_copy, whole, part, tampered, expired in answers:
        (output,) = event["data"]["outputs"]
        assert output["type"] == "video"
        assert output["url"].startswith(f"{public_url}/sim/"), output
        assert output["mirror_url"].startswith(f"{public_url}/v1/files/"), output
        assert "mirror_error" not in output
        assert provider_copy.content == SAMPLE_MP4
        assert whole.status_code == 200
        assert whole.content == SAMPLE_MP4
        assert whole.headers["content-type"] == "video/mp4"
        assert part.status_code == 206
        assert part.content == SAMPLE_MP4[100:1124]
        assert part.headers["content-range"] == f"bytes 100-1123/{len(SAMPLE_MP4)}"
        assert tampered.status_code == 403
        assert expired.status_code == 410
        # The job document carries the mirror too (with a freshly minted link).
        (stored,) = documents[event["data"]["id"]]["outputs"]
        assert stored["url"] == output["url"]
        assert digest_of(stored["mirror_url"]) == digest_of(output["mirror_url"])
    for job in jobs:
        assert Counter(e["type"] for e in logged[job["id"]])["job.succeeded"] == 1
    assert [(r["status"], r["attempts"], r["error"]) for r in mirror_rows(settings)] == [
        ("done", 1, None),
        ("done", 1, None),
    ]


# --- durability ---------------------------------------------------------------------------------


async def test_a_restart_between_the_callback_and_the_download_still_ends_mirrored(
    settings_factory: SettingsFactory,
) -> None:
    files = Files(hang=True)
    async with run_server(files.app()) as files_url:
        url = f"{files_url}/video.mp4"
        first_sock = loopback_socket()
        first = settings_factory(
            PUBLIC_URL=url_of(first_sock), SIM_DELAY="3600", MIRROR_OUTPUTS="true"
        )
        async with served(first, first_sock) as http:
            job = await create(http)
            await finish(http, job, url)
            await files.wait_for(lambda f: f.hanging == 1)
            # Succeeded and acknowledged, but the event waits for the copy.
            during = (await http.get(f"/v1/jobs/{job['id']}")).json()
            events_during = [e["type"] for e in await job_events(http, job["id"])]
        # reelhook stopped in the middle of the download.
        files.hang = False
        files.release.set()
        pending = mirror_rows(first)
        leftovers = list((first.blob_dir / "tmp").iterdir())
        stored = [p for p in first.blob_dir.rglob("*") if p.is_file()]

        second_sock = loopback_socket()
        second = settings_factory(
            PUBLIC_URL=url_of(second_sock), SIM_DELAY="3600", MIRROR_OUTPUTS="true"
        )
        async with served(second, second_sock) as http:
            event = await succeeded_event(http, job["id"])
            async with httpx.AsyncClient() as anonymous:
                mirrored = await anonymous.get(event["data"]["outputs"][0]["mirror_url"])
            events_after = [e["type"] for e in await job_events(http, job["id"])]

    assert during["status"] == "succeeded"
    assert during["outputs"] == [{"url": url, "type": "video"}]
    assert events_during == ["job.submitted"]
    assert [(r["status"], r["attempts"]) for r in pending] == [("pending", 0)]
    assert leftovers == [], "a cut-short download left a partial file behind"
    assert stored == []
    assert event["data"]["status"] == "succeeded"
    assert event["data"]["outputs"][0]["url"] == url
    assert mirrored.status_code == 200
    assert mirrored.content == SAMPLE_MP4
    assert events_after == ["job.submitted", "job.succeeded"]
    assert files.requests["video.mp4"] == 2
    assert [r["status"] for r in mirror_rows(second)] == ["done"]


# --- what is taken and what is refused ----------------------------------------------------------


async def test_a_failed_copy_still_announces_the_job_with_the_provider_url_and_the_reason(
    settings_factory: SettingsFactory,
) -> None:
    files = Files()
    sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock), SIM_DELAY="3600", MIRROR_OUTPUTS="true", MIRROR_MAX_BYTES="4096"
    )
    assert len(SAMPLE_MP4) > 4096
    async with run_server(files.app()) as files_url, served(settings, sock) as http:
        refused_target = f"http://0.0.0.0:{files_url.rsplit(':', 1)[1]}/video.mp4"
        cases = {
            f"{files_url}/status-404": "HTTP 404",
            f"{files_url}/status-403": "HTTP 403",
            f"{files_url}/html": "served text/html, not a video",
            f"{files_url}/text-mp4": "served text/plain, not a video",
            f"{files_url}/empty": "an empty file",
            f"{files_url}/video.mp4": "larger than 4096 bytes",
            f"{files_url}/redirect?to={refused_target}": "not a public address",
        }
        events = {}
        for url in cases:
            job = await create(http)
            await finish(http, job, url)
            events[url] = await succeeded_event(http, job["id"])

    for url, reason in cases.items():
        data = events[url]["data"]
        assert data["status"] == "succeeded"
        (output,) = data["outputs"]
        assert output["url"] == url
        assert "mirror_url" not in output
        assert reason in output["mirror_error"], (url, output)
    # Permanent failures are not retried.
    assert all(count == 1 for count in files.requests.values()), files.requests
    assert [r["status"] for r in mirror_rows(settings)] == ["failed"] * len(cases)


async def test_generic_binary_mp4_and_several_outputs_are_mirrored(
    settings_factory: SettingsFactory,
) -> None:
    """``application/octet-stream`` is taken when the bytes are an MP4; one event covers both."""
    files = Files()
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="3600", MIRROR_OUTPUTS="true")
    async with run_server(files.app()) as files_url, served(settings, sock) as http:
        job = await create(http)
        await finish(http, job, f"{files_url}/octet", f"{files_url}/video.mp4")
        event = await succeeded_event(http, job["id"])
        async with httpx.AsyncClient() as anonymous:
            copies = [await anonymous.get(o["mirror_url"]) for o in event["data"]["outputs"]]
    assert [o["url"] for o in event["data"]["outputs"]] == [
        f"{files_url}/octet",
        f"{files_url}/video.mp4",
    ]
    for copy in copies:
        assert copy.status_code == 200
        assert copy.content == SAMPLE_MP4
        assert copy.headers["content-type"] == "video/mp4"


async def test_a_transient_failure_is_retried_and_a_persistent_one_given_up(
    settings_factory: SettingsFactory,
) -> None:
    files = Files()
    sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock),
        SIM_DELAY="3600",
        MIRROR_OUTPUTS="true",
        MIRROR_RETRY_SCHEDULE="0.05,0.05",
    )
    async with (
        run_server(files.app()) as files_url,
        served(settings, sock) as http,
    ):
        flaky = await create(http)
        await finish(http, flaky, f"{files_url}/flaky")
        recovered = await succeeded_event(http, flaky["id"])
        broken = await create(http)
        await finish(http, broken, f"{files_url}/status-503")
        given_up = await succeeded_event(http, broken["id"])

    assert "mirror_url" in recovered["data"]["outputs"][0]
    assert files.requests["flaky"] == 2
    (output,) = given_up["data"]["outputs"]
    assert "mirror_url" not in output
    assert output["mirror_error"] == "the output URL answered HTTP 503 (after 3 attempts)"
    assert files.requests["status-503"] == 3


async def test_only_the_simulator_is_trusted_without_an_allow_list(
    settings_factory: SettingsFactory,
) -> None:
    """With no private network allowed, the in-process simulator's videos (served from reelhook's
    own address) are still mirrored, but another loopback host is never contacted."""
    files = Files()
    sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock),
        # Long enough for this test's own callback to come first on a loaded machine.
        SIM_DELAY="3",
        MIRROR_OUTPUTS="true",
        ALLOW_PRIVATE_SUBSCRIBERS="",
    )
    assert settings.allow_private_subscribers == ()
    async with run_server(files.app()) as files_url, served(settings, sock) as http:
        # The simulator's own callback comes later for this one (and is then a duplicate).
        other = await create(http)
        await finish(http, other, f"{files_url}/video.mp4")
        refused = await succeeded_event(http, other["id"])
        simulated = await create(http)
        from_sim = await succeeded_event(http, simulated["id"], within=20)

    assert "mirror_url" in from_sim["data"]["outputs"][0]
    (output,) = refused["data"]["outputs"]
    assert "mirror_url" not in output
    assert "not a public address" in output["mirror_error"]
    assert files.requests == {}


async def test_with_mirroring_off_the_event_goes_out_at_once_with_the_provider_url(
    settings_factory: SettingsFactory,
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="3600", MIRROR_OUTPUTS="false")
    async with served(settings, sock) as http:
        job = await create(http)
        await finish(http, job, "http://127.0.0.1:9/never-fetched.mp4")
        # Committed with the callback: no waiting needed.
        events = await job_events(http, job["id"])
    assert [e["type"] for e in events] == ["job.submitted", "job.succeeded"]
    assert events[1]["data"]["outputs"] == [
        {"url": "http://127.0.0.1:9/never-fetched.mp4", "type": "video"}
    ]
    assert mirror_rows(settings) == []


def test_the_stored_output_keeps_the_reason() -> None:
    """The reason survives a round trip through the stored form (it is what the API renders)."""
    output = Output(url="https://cdn.example/v.mp4", mirror_error="the output URL answered 404")
    assert Output.from_dict(json.loads(json.dumps(output.to_dict()))) == output
    assert output.public(lambda digest, media_type: "unused") == {
        "url": "https://cdn.example/v.mp4",
        "type": "video",
        "mirror_error": "the output URL answered 404",
    }


async def test_partial_files_of_a_killed_process_are_removed_at_start(
    settings_factory: SettingsFactory,
) -> None:
    """A process killed mid-download cannot clean up after itself; the next start does."""
    settings = settings_factory()
    leftover = settings.blob_dir / "tmp" / "0-0123456789abcdef"  # pid 0 is never a process of ours
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(SAMPLE_MP4[:1000])
    async with api_client(settings) as http:
        assert (await http.get("/healthz")).status_code == 200
        remaining = list(leftover.parent.iterdir())
    assert remaining == []


def test_mirror_settings() -> None:
    assert load_settings({}).mirror_timeout == 600
    assert load_settings({"REELHOOK_MIRROR_TIMEOUT": "30"}).mirror_timeout == 30
    for bad in ("0", "soon", "inf"):
        with pytest.raises(SettingsError, match=r"^REELHOOK_MIRROR_TIMEOUT: "):
            load_settings({"REELHOOK_MIRROR_TIMEOUT": bad})
