"""Reading jobs: one job as its caller may see it, its timeline, and a filtered page of them."""

from __future__ import annotations

from dataclasses import dataclass

from service.access.callers import Caller
from service.core import params
from service.core.errors import NotFound
from service.core.models import Job, JobStatus
from service.core.paging import Page, page_of
from service.core.params import Query
from service.jobs.catalog import MODELS
from service.storage import jobs, timeline
from service.storage.database import Database


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing shows (None: any); times are epoch seconds, ``until`` exclusive."""

    status: JobStatus | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None


def job_filter(query: Query) -> JobFilter:
    """The filters of a job listing as a query string spells them (``status``, ``model``,
    ``since``, ``until``)."""
    status = params.choice(query, "status", JobStatus)
    return JobFilter(
        status=JobStatus(status) if status is not None else None,
        model=params.choice(query, "model", MODELS),
        since=params.time(query, "since"),
        until=params.time(query, "until"),
    )


@dataclass(frozen=True, slots=True)
class Moment:
    """One line of a job's timeline."""

    at: float
    kind: str  # "event" or "callback"
    title: str
    detail: str = ""
    body: str = ""


class JobReader:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def find(self, caller: Caller, job_id: str) -> Job:
        """The job, if ``caller`` may see it; :class:`NotFound` otherwise (also for others'
        jobs)."""
        job = await jobs.get(self._db.reader, job_id)
        if job is None or not caller.can_see(job.owner_key_id):
            raise NotFound(f"no job {job_id!r}")
        return job

    async def page(
        self, caller: Caller, chosen: JobFilter, *, cursor: str | None, limit: int
    ) -> Page[Job]:
        """The jobs ``caller`` may see (an admin: everyone's), newest first."""
        rows = await jobs.list_page(
            self._db.reader,
            owner_key_id=caller.owner_filter,
            status=chosen.status,
            model=chosen.model,
            before_id=cursor,
            limit=limit + 1,
            created_since=chosen.since,
            created_until=chosen.until,
        )
        return page_of(rows, limit, lambda job: job.id)

    async def timeline(self, job: Job) -> list[Moment]:
        """The job's events and the provider callbacks behind them, oldest first."""
        reader = self._db.reader
        moments = [
            Moment(event.created_at, "event", event.type, event.id)
            for event in await timeline.events_of(reader, job.id)
        ]
        moments += [
            Moment(
                callback.received_at,
                "callback",
                # Segmind answers the held request itself; the others call back.
                (
                    f"held answer from {callback.provider}"
                    if callback.provider == "segmind"
                    else f"callback from {callback.provider}"
                ),
                f"{callback.outcome}, {callback.size} bytes"
                + (f", replayed {callback.replays} times" if callback.replays else ""),
                callback.excerpt,
            )
            for callback in await timeline.callbacks_of(reader, job.id)
        ]
        # A callback and the event it causes share one timestamp: the cause goes first.
        moments.sort(key=lambda moment: (moment.at, moment.kind != "callback"))
        return moments
