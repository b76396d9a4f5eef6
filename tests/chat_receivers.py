"""Scripted stand-ins for the chat services the examples/templates/ bodies are made for.

Each checks a request as the real service does (as its public API documentation describes) and
answers as it would: Slack's incoming webhooks (``ok``, or 400 ``invalid_payload``/``no_text``),
Discord's Execute Webhook (204, or 400 with a JSON error), Telegram's ``sendVideo`` (``{"ok":
true}``, or 400 with a description). Accepted messages and refusals are recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

BOT_TOKEN = "123456:TEST-token"

_SLACK_BLOCKS = {"header", "section", "context", "divider", "image", "actions", "rich_text"}


class Refused(ValueError):
    pass


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def check_slack(message: Any) -> None:
    """Slack: ``text`` (the notification fallback) or ``blocks``; a header's text is plain text
    of at most 150 characters, a section's text at most 3000."""
    if not isinstance(message, dict):
        raise Refused("invalid_payload")
    text, blocks = message.get("text"), message.get("blocks")
    if not (isinstance(text, str) and text.strip()) and not blocks:
        raise Refused("no_text")
    for block in blocks or []:
        if not isinstance(block, dict) or block.get("type") not in _SLACK_BLOCKS:
            raise Refused("invalid_blocks")
        inner = block.get("text")
        if block["type"] == "header" and (
            not isinstance(inner, dict)
            or inner.get("type") != "plain_text"
            or not 0 < len(inner.get("text", "")) <= 150
        ):
            raise Refused("invalid_blocks")
        if block["type"] == "section" and (
            not isinstance(inner, dict)
            or inner.get("type") not in ("plain_text", "mrkdwn")
            or not 0 < len(inner.get("text", "")) <= 3000
        ):
            raise Refused("invalid_blocks")


def check_discord(message: Any) -> None:
    """Discord: ``content`` (at most 2000 characters) or ``embeds`` (at most 10); an embed's
    title at most 256, description 4096, ``url`` a URL, ``color`` an integer."""
    if not isinstance(message, dict):
        raise Refused("Cannot send an empty message")
    content, embeds = message.get("content"), message.get("embeds")
    if not content and not embeds:
        raise Refused("Cannot send an empty message")
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        raise Refused("content: Must be 2000 or fewer in length.")
    if embeds is not None:
        if not isinstance(embeds, list) or len(embeds) > 10:
            raise Refused("embeds: Must be 10 or fewer in length.")
        for embed in embeds:
            if len(embed.get("title", "")) > 256 or len(embed.get("description", "")) > 4096:
                raise Refused("embeds.0: Must be 4096 or fewer in length.")
            if "url" in embed and not _is_url(embed["url"]):
                raise Refused("embeds.0.url: Not a well formed URL.")
            if "color" in embed and not isinstance(embed["color"], int):
                raise Refused("embeds.0.color: Value is not int.")


def check_telegram_send_video(message: Any) -> None:
    """Telegram sendVideo: ``chat_id`` (an integer or ``@channel``), ``video`` (an HTTP URL the
    servers fetch, or a file id), ``caption`` at most 1024 characters."""
    if not isinstance(message, dict):
        raise Refused("Bad Request: invalid request body")
    chat = message.get("chat_id")
    if not (isinstance(chat, int) and not isinstance(chat, bool)) and not (
        isinstance(chat, str) and (chat.startswith("@") or chat.lstrip("-").isdigit())
    ):
        raise Refused("Bad Request: chat not found")
    if not _is_url(message.get("video")):
        raise Refused("Bad Request: wrong HTTP URL specified")
    caption = message.get("caption", "")
    if not isinstance(caption, str) or len(caption) > 1024:
        raise Refused("Bad Request: message caption is too long")


@dataclass
class ChatReceivers:
    """The three services on one loopback server: ``/slack``, ``/discord``,
    ``/bot<token>/sendVideo``."""

    accepted: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"slack": [], "discord": [], "telegram": []}
    )
    refused: list[tuple[str, str]] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def slack(request: Request) -> Response:
            message = await self._read(request, "slack")
            try:
                check_slack(message)
            except Refused as exc:
                return self._refuse("slack", str(exc), PlainTextResponse(str(exc), 400))
            return self._accept("slack", message, PlainTextResponse("ok"))

        async def discord(request: Request) -> Response:
            message = await self._read(request, "discord")
            try:
                check_discord(message)
            except Refused as exc:
                body = {"code": 50006, "message": str(exc)}
                return self._refuse("discord", str(exc), JSONResponse(body, 400))
            return self._accept("discord", message, Response(status_code=204))

        async def telegram(request: Request) -> Response:
            if request.path_params["token"] != BOT_TOKEN:
                return JSONResponse({"ok": False, "error_code": 401}, 401)
            message = await self._read(request, "telegram")
            try:
                check_telegram_send_video(message)
            except Refused as exc:
                body = {"ok": False, "error_code": 400, "description": str(exc)}
                return self._refuse("telegram", str(exc), JSONResponse(body, 400))
            result = {"message_id": 1, "chat": {"id": message["chat_id"]}}
            return self._accept("telegram", message, JSONResponse({"ok": True, "result": result}))

        return Starlette(
            routes=[
                Route("/slack", slack, methods=["POST"]),
                Route("/discord", discord, methods=["POST"]),
                Route("/bot{token}/sendVideo", telegram, methods=["POST"]),
            ]
        )

    async def _read(self, request: Request, service: str) -> Any:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    def _accept(self, service: str, message: dict[str, Any], response: Response) -> Response:
        self.accepted[service].append(message)
        self._signal()
        return response

    def _refuse(self, service: str, why: str, response: Response) -> Response:
        self.refused.append((service, why))
        self._signal()
        return response

    def _signal(self) -> None:
        self.arrived.set()
        self.arrived = anyio.Event()
