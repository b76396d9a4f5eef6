"""The ready-made templates in examples/templates/: each sample event renders into the body the
chat service expects, checked by a scripted receiver on loopback that answers as the service
does (tests/chat_receivers.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.delivery.samples import sample_event
from service.delivery.transform import Renderer
from tests.chat_receivers import BOT_TOKEN, ChatReceivers, Refused, check_slack
from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, run_server, url_of
from tests.support import served, wait_for_job

pytestmark = pytest.mark.anyio

TEMPLATES = Path(__file__).parent.parent / "examples" / "templates"


def template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def rendered(name: str, event_type: str) -> bytes:
    event = sample_event(
        event_type, now=time.time(), file_url=lambda d, m: f"https://r.example/{d}"
    )
    event_id = event.pop("id")
    return Renderer().render(template(name), "application/json", event_id, event)


CASES = [
    ("slack.json.j2", "/slack", "slack", ("job.succeeded", "job.failed", "job.expired")),
    ("discord.json.j2", "/discord", "discord", ("job.succeeded", "job.failed", "job.expired")),
    ("telegram-sendvideo.json.j2", f"/bot{BOT_TOKEN}/sendVideo", "telegram", ("job.succeeded",)),
]


@pytest.mark.parametrize(("name", "path", "service", "event_types"), CASES)
async def test_each_template_is_accepted_by_its_service(
    name: str, path: str, service: str, event_types: tuple[str, ...]
) -> None:
    receivers = ChatReceivers()
    async with run_server(receivers.app()) as base, httpx.AsyncClient(base_url=base) as http:
        for event_type in event_types:
            body = rendered(name, event_type)
            answer = await http.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.is_success, (event_type, answer.text)
    assert receivers.refused == []
    messages = receivers.accepted[service]
    assert len(messages) == len(event_types)
    first: dict[str, Any] = messages[0]
    if service == "slack":
        assert first["text"] == "Video ready: trinetra/kling-v3"
        assert "https://cdn.example.com/videos/sample.mp4" in first["blocks"][1]["text"]["text"]
        assert "content policy" in messages[1]["blocks"][1]["text"]["text"]
    elif service == "discord":
        assert first["content"] == "Video ready: https://cdn.example.com/videos/sample.mp4"
        assert first["embeds"][0]["url"] == "https://cdn.example.com/videos/sample.mp4"
        assert messages[1]["content"] == "Video job failed"
    else:
        assert first["chat_id"] == 42  # the sample job's metadata.chat_id
        assert first["video"] == "https://cdn.example.com/videos/sample.mp4"
        assert first["caption"].startswith("Your video is ready: A drone shot")


async def test_the_receivers_refuse_what_the_services_refuse() -> None:
    receivers = ChatReceivers()
    async with run_server(receivers.app()) as base, httpx.AsyncClient(base_url=base) as http:
        assert (await http.post("/slack", json={"blocks": []})).status_code == 400
        assert (await http.post("/discord", json={"content": "x" * 2001})).status_code == 400
        answer = await http.post(
            f"/bot{BOT_TOKEN}/sendVideo", json={"chat_id": 42, "video": "not a url"}
        )
        assert answer.status_code == 400 and answer.json()["ok"] is False
    assert [service for service, _ in receivers.refused] == ["slack", "discord", "telegram"]
    with pytest.raises(Refused, match="invalid_blocks"):
        check_slack({"text": "x", "blocks": [{"type": "header", "text": {"type": "mrkdwn"}}]})


async def test_a_finished_job_reaches_slack_discord_and_telegram_with_templates_only(
    settings_factory: SettingsFactory,
) -> None:
    """No code on the subscriber's side: three subscriptions, each only a URL and a template
    from examples/templates/, and a finished job lands in each chat correctly shaped."""
    receivers = ChatReceivers()
    with loopback_socket() as sock:
        settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.05")
        async with run_server(receivers.app()) as chat, served(settings, sock) as http:
            for name, path, event_types in (
                ("slack.json.j2", "/slack", ["job.succeeded", "job.failed"]),
                ("discord.json.j2", "/discord", ["job.succeeded", "job.failed"]),
                ("telegram-sendvideo.json.j2", f"/bot{BOT_TOKEN}/sendVideo", ["job.succeeded"]),
            ):
                created = await http.post(
                    "/v1/subscriptions",
                    json={
                        "url": chat + path,
                        "template": template(name),
                        "event_types": event_types,
                    },
                )
                assert created.status_code == 201, created.text
            submitted = await http.post(
                "/v1/jobs",
                json={
                    "model": "segmind/kling-2.5-turbo",
                    "input": {"prompt": "a fox in the snow"},
                    "metadata": {"chat_id": 777},
                },
            )
            assert submitted.status_code == 202, submitted.text
            job = await wait_for_job(http, submitted.json()["id"])
            assert job["status"] == "succeeded"
            with anyio.fail_after(15):
                while sum(map(len, receivers.accepted.values())) < 3 and not receivers.refused:
                    await receivers.arrived.wait()
    assert receivers.refused == []
    # A file link is signed with the time it was minted (`payload.timestamp.signature`): the job
    # document and each delivery mint their own, so they name the same file by the payload.
    video = same_file(job["outputs"][0]["url"])
    [slack] = receivers.accepted["slack"]
    assert slack["text"] == "Video ready: segmind/kling-2.5-turbo"
    link = slack["blocks"][1]["text"]["text"].split("<", 1)[1].split("|", 1)[0]
    assert same_file(link) == video
    [discord] = receivers.accepted["discord"]
    assert discord["content"].startswith("Video ready: ")
    assert same_file(discord["content"].removeprefix("Video ready: ")) == video
    [telegram] = receivers.accepted["telegram"]
    assert same_file(telegram.pop("video")) == video
    assert telegram == {
        "chat_id": 777,
        "caption": "Your video is ready: a fox in the snow",
        "supports_streaming": True,
    }


def same_file(url: str) -> str:
    """A signed file link without its timestamp and signature: the file it names."""
    payload, _timestamp, _signature = url.rsplit(".", 2)
    return payload
