"""``/v1/jobs``: submit a job, read one, list them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import (
    Caller,
    Services,
    authenticate,
    choice_param,
    limit_param,
    read_json,
    services,
    time_param,
)
from service.catalog import MODELS
from service.errors import NotFound, ValidationFailed
from service.models import Job, JobStatus
from service.storage import jobs

STATUSES = tuple(status.value for status in JobStatus)


async def create_job(request: Request) -> Response:
    caller = await authenticate(request, "jobs:write")
    body = await read_json(request)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ValidationFailed.field("Idempotency-Key", "must be 1 to 255 characters")
    created = await services(request).submitter.create(caller.key_id, body, key)
    document = created.job.to_document(services(request).publisher.file_url)
    if created.callback_secret is not None:
        # Shown once, like a subscription secret: it verifies the events sent to callback_url.
        document["callback_secret"] = created.callback_secret
    headers = {"Location": f"/v1/jobs/{created.job.id}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(document, status_code=202, headers=headers)


async def get_job(request: Request) -> Response:
    caller = await authenticate(request, "jobs:read")
    job = await find_job(services(request), caller, request.path_params["job_id"])
    return JSONResponse(job.to_document(services(request).publisher.file_url))


async def find_job(state: Services, caller: Caller, job_id: str) -> Job:
    """The job, if ``caller`` may see it; :class:`NotFound` otherwise (also for others' jobs)."""
    job = await jobs.get(state.db.reader, job_id)
    if job is None or not caller.can_see(job.owner_key_id):
        raise NotFound(f"no job {job_id!r}")
    return job


async def list_jobs(request: Request) -> Response:
    caller = await authenticate(request, "jobs:read")
    page, next_cursor = await job_page(request, caller)
    file_url = services(request).publisher.file_url
    return JSONResponse(
        {"data": [job.to_document(file_url) for job in page], "next_cursor": next_cursor}
    )


async def job_page(request: Request, caller: Caller) -> tuple[list[Job], str | None]:
    """One page of the jobs ``caller`` may see, newest first, filtered by the query parameters
    ``status``, ``model``, ``since``, ``until`` (ISO-8601), ``cursor`` and ``limit``; with the
    cursor of the next page, if any."""
    limit = limit_param(request)
    page = await jobs.list_page(
        services(request).db.reader,
        owner_key_id=caller.owner_filter,
        status=choice_param(request, "status", STATUSES),
        model=choice_param(request, "model", tuple(MODELS)),
        before_id=request.query_params.get("cursor"),
        limit=limit + 1,
        created_since=time_param(request, "since"),
        created_until=time_param(request, "until"),
    )
    more = len(page) > limit
    page = page[:limit]
    return page, page[-1].id if more else None
