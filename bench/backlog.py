"""Backlogs put in through reelhook's own code while the service is stopped: a fan-out of job
events, and a slow subscriber's due deliveries."""

from __future__ import annotations

import time

from bench.load import callback_body
from bench.seed import job_id
from service.app.settings import load_settings
from service.core.ids import new_id
from service.core.tokens import Tokens
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import apply_update
from service.providers import CALLBACK_ADAPTERS
from service.storage import events
from service.storage.database import Database


async def seed_backlog(env: dict[str, str], first: int, count: int, video_url: str) -> None:
    """Apply the success callback of jobs ``first..first+count-1``, queueing their deliveries."""
    settings = load_settings(env)
    tokens = Tokens(list(settings.secret_keys))

    def file_url(digest: str, media_type: str) -> str:
        return f"{settings.public_url}/v1/files/{tokens.file(digest, media_type)}"

    publisher = Publisher(file_url)
    adapter = CALLBACK_ADAPTERS["trinetra"]
    async with Database.open(settings.database_url) as db:
        for index in range(first, first + count):
            body = callback_body(index, video_url)
            await apply_update(
                db,
                publisher,
                job_id=job_id(index),
                provider="trinetra",
                update=adapter.parse_callback(body),
                raw=body,
                now=time.time(),
            )


async def seed_due(env: dict[str, str], subscription_id: str, count: int) -> None:
    """Queue ``count`` small events, each with one delivery to ``subscription_id`` due now,
    through reelhook's own storage code (the backlog a slow subscriber builds)."""
    settings = load_settings(env)
    now = time.time()
    async with Database.open(settings.database_url) as db:
        for start in range(0, count, 20_000):
            batch = [
                events.NewEvent(
                    id=new_id("evt"),
                    type="ping",
                    job_id=None,
                    created_at=now,
                    payload=b'{"type":"ping","data":{}}',
                    subscription_ids=[subscription_id],
                    first_attempt_at=now,
                )
                for _ in range(min(20_000, count - start))
            ]
            async with db.transaction() as conn:
                await events.append(conn, batch)
