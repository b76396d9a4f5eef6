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
from service.jobs.lifecycle import Update, apply_updates
from service.providers import CALLBACK_ADAPTERS
from service.storage import events
from service.storage.database import Database

INGEST_BATCH = 50
"""Callbacks per transaction when a backlog is published: what the ingest writer commits at
once under scenario 1's closed loop of 50 connections."""


async def seed_backlog(env: dict[str, str], first: int, count: int, video_url: str) -> float:
    """Apply the success callback of jobs ``first..first+count-1``, queueing their deliveries,
    in batches as the ingest writer stores them; return the seconds it took (the storage side of
    ingest: everything a callback costs after its HTTP request is parsed and verified)."""
    settings = load_settings(env)
    tokens = Tokens(list(settings.secret_keys))

    def file_url(digest: str, media_type: str) -> str:
        return f"{settings.public_url}/v1/files/{tokens.file(digest, media_type)}"

    publisher = Publisher(file_url)
    adapter = CALLBACK_ADAPTERS["trinetra"]
    async with Database.open(settings.database_url) as db:
        started = time.perf_counter()
        for start in range(first, first + count, INGEST_BATCH):
            batch = []
            for index in range(start, min(start + INGEST_BATCH, first + count)):
                body = callback_body(index, video_url)
                batch.append(Update(job_id(index), "trinetra", adapter.parse_callback(body), body))
            async with db.transaction() as conn:
                await apply_updates(conn, publisher, batch, time.time())
        return time.perf_counter() - started


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
