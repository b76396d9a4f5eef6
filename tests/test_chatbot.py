"""examples/chatbot: the Telegram bot, against reelhook and a fake Telegram Bot API on loopback.

A chat message ``/video ...`` reaches the bot as Telegram would send it; the bot submits the job,
reelhook's simulator finishes it, reelhook delivers the signed event, and the bot posts the video
to the fake Telegram, which records every call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.chatbot.bot import BotConfig, configure_logging, create_bot
from service.delivery import signing
from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, served

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BOT_TOKEN = "123456:TEST-token"
TELEGRAM_SECRET = "telegram-secret-token"


@dataclass
class FakeTelegram:
    """Telegram's Bot API as far as the bot uses it; ``answers`` scripts each method's status by
    call number (default 200)."""

    calls: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    answers: dict[str, Callable[[int], int]] = field(default_factory=dict)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def method(request: Request) -> Response:
            assert request.path_params["token"] == BOT_TOKEN
            name = request.path_params["method"]
            count = 1 + sum(1 for call in self.calls if call[0] == name)
            status = self.answers[name](count) if name in self.answers else 200
            self.calls.append((name, await request.json(), status))
            self.arrived.set()
            self.arrived = anyio.Event()
            return JSONResponse({"ok": status == 200}, status_code=status)

        return Starlette(routes=[Route("/bot{token}/{method}", method, methods=["POST"])])

    def sent(self, name: str) -> list[dict[str, Any]]:
        return [
            payload for method, payload, status in self.calls if method == name and status == 200
        ]

    async def wait_for(self, predicate: Callable[[FakeTelegram], bool]) -> None:
        with anyio.fail_after(10):
            while not predicate(self):
                await self.arrived.wait()


@dataclass
class World:
    reelhook: httpx.AsyncClient
    bot: httpx.AsyncClient
    telegram: FakeTelegram
    secret: str


@asynccontextmanager
async def world(settings_factory: SettingsFactory, model: str) -> AsyncIterator[World]:
    telegram = FakeTelegram()
    with loopback_socket() as reelhook_sock, loopback_socket() as bot_sock:
        settings = settings_factory(PUBLIC_URL=url_of(reelhook_sock), SIM_DELAY="0.05")
        async with (
            run_server(telegram.app()) as telegram_url,
            served(settings, reelhook_sock) as api,
        ):
            subscribed = await api.post(
                "/v1/subscriptions",
                json={
                    "url": f"{url_of(bot_sock)}/reelhook",
                    "event_types": ["job.succeeded", "job.failed"],
                },
            )
            assert subscribed.status_code == 201, subscribed.text
            config = BotConfig(
                telegram_token=BOT_TOKEN,
                telegram_secret=TELEGRAM_SECRET,
                reelhook_url=url_of(reelhook_sock),
                reelhook_api_key=ADMIN_KEY,
                webhook_secret=subscribed.json()["secret"],
                telegram_api_base=telegram_url,
                model=model,
            )
            async with (
                run_server(create_bot(config), bot_sock) as bot_url,
                httpx.AsyncClient(base_url=bot_url) as bot,
            ):
                yield World(api, bot, telegram, subscribed.json()["secret"])


def update(text: str, chat_id: int = 4242, update_id: int = 1) -> dict[str, Any]:
    return {"update_id": update_id, "message": {"chat": {"id": chat_id}, "text": text}}


async def from_telegram(
    bot: httpx.AsyncClient, body: dict[str, Any], secret: str = TELEGRAM_SECRET
) -> int:
    response = await bot.post(
        "/telegram", json=body, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
    )
    return response.status_code


async def test_a_chat_asks_for_a_video_and_gets_reelhooks_mirrored_copy(
    settings_factory: SettingsFactory,
) -> None:
    async with world(settings_factory, "segmind/kling-2.5-turbo") as w:
        assert await from_telegram(w.bot, update("/video a cat surfing a wave")) == 204
        await w.telegram.wait_for(lambda t: len(t.sent("sendVideo")) == 1)
        [ack] = w.telegram.sent("sendMessage")
        assert ack["chat_id"] == 4242 and ack["text"].startswith("On it")
        [video] = w.telegram.sent("sendVideo")
        [job] = (await w.reelhook.get("/v1/jobs")).json()["data"]
        assert job["metadata"] == {"chat_id": 4242}
        assert set(video) == {"chat_id", "video", "caption"}
        assert (video["chat_id"], video["caption"]) == (4242, "a cat surfing a wave")
        # reelhook's own copy (its links are minted afresh each time a job is rendered).
        files = job["outputs"][0]["mirror_url"].split("/v1/files/")[0] + "/v1/files/"
        assert video["video"].startswith(files)
        fetched = await w.reelhook.get(video["video"])
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "video/mp4"

        # Telegram redelivers an update it is unsure of: still one job.
        assert await from_telegram(w.bot, update("/video a cat surfing a wave")) == 204
        assert len((await w.reelhook.get("/v1/jobs")).json()["data"]) == 1


async def test_without_a_mirror_the_providers_url_is_posted_and_chat_outages_are_retried(
    settings_factory: SettingsFactory,
) -> None:
    async with world(settings_factory, "trinetra/kling-v3") as w:
        # Telegram is down for the first attempt: the bot answers 503 and reelhook retries.
        w.telegram.answers["sendVideo"] = lambda count: 502 if count == 1 else 200
        submitted = await w.reelhook.post(
            "/v1/jobs",
            json={
                "model": "trinetra/kling-v3",
                "input": {"prompt": "rain"},
                "metadata": {"chat_id": 7},
            },
        )
        assert submitted.status_code == 202, submitted.text
        await w.telegram.wait_for(lambda t: len(t.sent("sendVideo")) == 1)
        job = (await w.reelhook.get(f"/v1/jobs/{submitted.json()['id']}")).json()
        assert "mirror_url" not in job["outputs"][0]
        assert w.telegram.sent("sendVideo") == [
            {"chat_id": 7, "video": job["outputs"][0]["url"], "caption": "rain"}
        ]
        assert [status for method, _, status in w.telegram.calls if method == "sendVideo"] == [
            502,
            200,
        ]


async def test_the_bot_refuses_forged_events_and_ignores_duplicates(
    settings_factory: SettingsFactory,
) -> None:
    async with world(settings_factory, "trinetra/kling-v3") as w:
        sample = (await w.reelhook.get("/v1/events/sample", params={"type": "job.failed"})).json()
        event = sample["data"][0]
        event_id = event.pop("id")
        event["data"]["metadata"] = {"chat_id": 99}
        body = json.dumps(event).encode()

        forged = signing.headers([signing.new_secret()], event_id, int(time.time()), body)
        answer = await w.bot.post("/reelhook", content=body, headers=forged)
        assert answer.status_code == 400
        assert w.telegram.calls == []

        signed = signing.headers([w.secret], event_id, int(time.time()), body)
        for _ in range(2):  # at-least-once: the same webhook-id twice
            answer = await w.bot.post("/reelhook", content=body, headers=signed)
            assert answer.status_code == 204
        assert w.telegram.sent("sendMessage") == [
            {"chat_id": 99, "text": f"No video: {event['data']['error']['message']}"}
        ]


async def test_telegram_updates_need_the_secret_token(settings_factory: SettingsFactory) -> None:
    async with world(settings_factory, "trinetra/kling-v3") as w:
        assert await from_telegram(w.bot, update("/video x"), secret="wrong") == 401
        assert await from_telegram(w.bot, update("hello")) == 204
        assert await from_telegram(w.bot, update("/video   ")) == 204
        assert w.telegram.sent("sendMessage") == [
            {"chat_id": 4242, "text": "Usage: /video <prompt>"}
        ]
        assert (await w.reelhook.get("/v1/jobs")).json()["data"] == []


async def test_the_bot_never_logs_its_telegram_token(
    settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    configure_logging()  # as `python -m examples.chatbot.bot` does
    caplog.set_level(logging.INFO)  # everything at INFO, as the bot runs
    try:
        async with world(settings_factory, "trinetra/kling-v3") as w:
            assert await from_telegram(w.bot, update("/video a quiet log")) == 204
            await w.telegram.wait_for(lambda t: len(t.sent("sendVideo")) == 1)
    finally:
        httpx_logger.setLevel(level)
    assert caplog.records  # the run did log at INFO
    assert BOT_TOKEN not in caplog.text
    assert BOT_TOKEN.split(":")[1] not in caplog.text
