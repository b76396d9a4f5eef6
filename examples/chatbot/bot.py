"""A Telegram bot that makes videos with reelhook and posts each one the moment it is ready.

In a chat, ``/video a drone shot over misty mountains`` submits a job to reelhook with the chat's
id in ``metadata``. reelhook signs and delivers the job's events to this bot's ``/reelhook``
endpoint; the bot verifies each one with the Standard Webhooks library, then posts the finished
video to that chat with Telegram's ``sendVideo`` (reelhook's stable ``mirror_url`` when there is
one, else the provider's ``url``), or the reason when the job failed.

Configuration (environment):

    TELEGRAM_BOT_TOKEN      the token @BotFather gave you
    TELEGRAM_SECRET_TOKEN   the secret_token you passed to setWebhook (Telegram sends it back)
    TELEGRAM_API_BASE       default https://api.telegram.org (a test points it at a fake)
    REELHOOK_URL            where reelhook runs, e.g. https://reelhook.example.org
    REELHOOK_API_KEY        an API key for submitting jobs
    REELHOOK_WEBHOOK_SECRET the whsec_ secret of the bot's reelhook subscription
    REELHOOK_MODEL          default trinetra/kling-v3

    .venv/bin/python examples/chatbot/bot.py --port 9100
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("reelhook.chatbot")

_SEEN_LIMIT = 10_000


@dataclass(frozen=True)
class BotConfig:
    telegram_token: str
    telegram_secret: str
    reelhook_url: str
    reelhook_api_key: str
    webhook_secret: str
    telegram_api_base: str = "https://api.telegram.org"
    model: str = "trinetra/kling-v3"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> BotConfig:
        missing = [
            name
            for name in (
                "TELEGRAM_BOT_TOKEN",
                "TELEGRAM_SECRET_TOKEN",
                "REELHOOK_URL",
                "REELHOOK_API_KEY",
                "REELHOOK_WEBHOOK_SECRET",
            )
            if not environ.get(name)
        ]
        if missing:
            raise SystemExit(f"chatbot: set {', '.join(missing)}")
        return cls(
            telegram_token=environ["TELEGRAM_BOT_TOKEN"],
            telegram_secret=environ["TELEGRAM_SECRET_TOKEN"],
            reelhook_url=environ["REELHOOK_URL"].rstrip("/"),
            reelhook_api_key=environ["REELHOOK_API_KEY"],
            webhook_secret=environ["REELHOOK_WEBHOOK_SECRET"],
            telegram_api_base=environ.get("TELEGRAM_API_BASE", cls.telegram_api_base).rstrip("/"),
            model=environ.get("REELHOOK_MODEL", cls.model),
        )


class ChatUnavailable(Exception):
    """Telegram did not take the message; reelhook should deliver the event again later."""


def video_url(job: dict[str, Any]) -> str | None:
    """reelhook's own copy when it has one (it outlives the provider's expiring link)."""
    for output in job.get("outputs") or []:
        url = output.get("mirror_url") or output.get("url")
        if url:
            return str(url)
    return None


def create_bot(config: BotConfig) -> Starlette:
    verifier = Webhook(config.webhook_secret)
    seen: OrderedDict[str, None] = OrderedDict()

    async def telegram(client: httpx.AsyncClient, method: str, payload: dict[str, Any]) -> None:
        url = f"{config.telegram_api_base}/bot{config.telegram_token}/{method}"
        try:
            response = await client.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise ChatUnavailable(f"{method}: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise ChatUnavailable(f"{method}: HTTP {response.status_code}")
        if not response.is_success:
            # A chat that does not exist or blocked the bot will not change its mind on retry.
            log.warning("telegram refused %s: %s", method, response.text[:300])

    async def on_event(request: Request) -> Response:
        body = await request.body()
        try:
            event = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return JSONResponse({"error": "bad signature"}, status_code=400)
        event_id = request.headers["webhook-id"]
        if event_id in seen:  # reelhook delivers at least once
            return Response(status_code=204)
        job = event.get("data", {})
        chat_id = (job.get("metadata") or {}).get("chat_id")
        try:
            if chat_id is not None:
                await announce(request.state.client, event["type"], job, chat_id)
        except ChatUnavailable as exc:
            log.warning("could not post %s to chat %s: %s", event_id, chat_id, exc)
            return JSONResponse({"error": "chat unavailable"}, status_code=503)
        seen[event_id] = None
        if len(seen) > _SEEN_LIMIT:
            seen.popitem(last=False)
        return Response(status_code=204)

    async def announce(
        client: httpx.AsyncClient, event_type: str, job: dict[str, Any], chat_id: Any
    ) -> None:
        prompt = str((job.get("input") or {}).get("prompt", ""))[:200]
        if event_type == "job.succeeded" and (video := video_url(job)):
            payload = {"chat_id": chat_id, "video": video, "caption": prompt}
            await telegram(client, "sendVideo", payload)
        elif event_type in ("job.failed", "job.expired", "job.canceled"):
            error = job.get("error") or {}
            reason = error.get("message") or event_type.removeprefix("job.")
            text = f"No video: {reason}"
            await telegram(client, "sendMessage", {"chat_id": chat_id, "text": text})

    async def on_update(request: Request) -> Response:
        """Telegram's webhook: ``/video <prompt>`` submits a job for this chat."""
        sent = request.headers.get("x-telegram-bot-api-secret-token", "")
        if not hmac.compare_digest(sent.encode(), config.telegram_secret.encode()):
            return Response(status_code=401)
        try:
            update = await request.json()
            message = update.get("message") or {}
            text = str(message.get("text") or "")
            chat_id = (message.get("chat") or {}).get("id")
        except (ValueError, AttributeError):
            return Response(status_code=400)
        command, _, prompt = text.partition(" ")
        if chat_id is None or command.split("@")[0] != "/video":
            return Response(status_code=204)
        client: httpx.AsyncClient = request.state.client
        if prompt.strip():
            reply = await submit(client, update.get("update_id"), prompt.strip(), chat_id)
        else:
            reply = "Usage: /video <prompt>"
        try:
            await telegram(client, "sendMessage", {"chat_id": chat_id, "text": reply})
        except ChatUnavailable:
            return Response(status_code=503)  # Telegram redelivers the update
        return Response(status_code=204)

    async def submit(client: httpx.AsyncClient, update_id: Any, prompt: str, chat_id: Any) -> str:
        try:
            response = await client.post(
                f"{config.reelhook_url}/v1/jobs",
                headers={
                    "X-API-Key": config.reelhook_api_key,
                    # Telegram redelivers an update it got no answer for; this keeps it one job.
                    "Idempotency-Key": f"telegram-{update_id}",
                },
                json={
                    "model": config.model,
                    "input": {"prompt": prompt},
                    "metadata": {"chat_id": chat_id},
                },
            )
        except httpx.HTTPError:
            return "Could not reach the video service; try again in a minute."
        if response.is_success:
            return "On it: your video will be posted here when it is ready."
        try:
            problem = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            problem = f"HTTP {response.status_code}"
        return f"Could not start the video: {problem}"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        async with httpx.AsyncClient(timeout=10.0) as client:
            yield {"client": client}

    return Starlette(
        routes=[
            Route("/reelhook", on_event, methods=["POST"]),
            Route("/telegram", on_update, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def configure_logging() -> None:
    """INFO lines to stderr, without the bot token: httpx logs every request's URL at INFO, and
    Telegram's Bot API carries the token in the URL path (``/bot<token>/sendMessage``)."""
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="reelhook's Telegram bot example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    configure_logging()
    bot = create_bot(BotConfig.from_environ(os.environ))
    uvicorn.run(bot, host=args.host, port=args.port, log_level="info")
