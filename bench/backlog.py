"""A fan-out backlog put in through reelhook's own callback code while the service is stopped."""

from __future__ import annotations

import time

from bench.load import callback_body
from bench.seed import job_id
from service.app.settings import load_settings
from service.core.tokens import Tokens
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import apply_update
from service.providers import CALLBACK_ADAPTERS
from service.storage.database import Database


async def seed_backlog(env: dict[str, str], first: int, count: int, video_url: str) -> None:
    """Apply the success callback of jobs ``first..first+count-1``, queueing their deliveries."""
    settings = load_settings(env)
    tokens = Tokens(list(settings.secret_keys))

    def file_url(digest: str, media_type: str) -> str:
        return f"{settings.public_url}/v1/files/{tokens.file(digest, media_type)}"

    publisher = Publisher(file_url)
    adapter = CALLBACK_ADAPTERS["trinetra"]
    async with Database.open(settings.database_path) as db:
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
