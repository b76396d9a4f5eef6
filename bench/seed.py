"""Benchmark fixtures written through reelhook's own storage code: jobs waiting for a callback."""

from __future__ import annotations

import os
import time
from pathlib import Path

from service.access.callers import hash_key
from service.app import bootstrap
from service.app.settings import load_settings
from service.core.models import Cost, Job, JobStatus
from service.storage import jobs, keys
from service.storage.database import Database

BATCH = 20_000


def job_id(index: int) -> str:
    return f"job_bench{index:08d}"


def provider_job_id(index: int) -> str:
    return f"tri_bench{index:08d}"


async def seed_jobs(env: dict[str, str], start: int, stop: int) -> None:
    """Store jobs ``start..stop-1`` as submitted Trinetra jobs owned by the admin key."""
    settings = load_settings(env)
    now = time.time()
    async with Database.open(settings.database_url) as db:
        await bootstrap.admin_key(db, settings, time.time)
        assert settings.admin_key is not None
        async with db.transaction() as conn:
            found = await keys.find_active(conn, hash_key(settings.admin_key))
        assert found is not None
        owner = found.id
        for first in range(start, stop, BATCH):
            batch = [
                Job(
                    id=job_id(i),
                    owner_key_id=owner,
                    model="trinetra/kling-v3",
                    provider="trinetra",
                    status=JobStatus.SUBMITTED,
                    input={"prompt": f"benchmark clip {i}", "duration": 5},
                    cost=Cost(estimated=50.0, unit="credits"),
                    created_at=now,
                    deadline_at=now + 86_400,
                    provider_job_id=provider_job_id(i),
                    submitted_at=now,
                )
                for i in range(first, min(first + BATCH, stop))
            ]
            async with db.transaction() as conn:
                await jobs.insert_many(conn, batch)


def database_bytes(data_dir: Path) -> dict[str, int]:
    """Sizes of the database file and its WAL."""
    sizes = {}
    for suffix in ("", "-wal"):
        path = data_dir / f"reelhook.db{suffix}"
        sizes["db" + suffix.replace("-", "_")] = path.stat().st_size if path.exists() else 0
    return sizes


def disk_fsync_probe(folder: Path, rounds: int = 500) -> dict[str, float]:
    """p50/p99 of a 1 KiB write + fdatasync on the data disk, in microseconds."""
    path = folder / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 1024
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return {"p50_us": samples[len(samples) // 2], "p99_us": samples[int(len(samples) * 0.99)]}
