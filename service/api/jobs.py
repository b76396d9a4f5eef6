"""``/v1/jobs``: submit a job, read one, list them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import authenticate, choice_param, limit_param, read_json, services
from service.catalog import MODELS
from service.errors import NotFound, ValidationFailed
from service.models import JobStatus
from service.storage import jobs

_STATUSES = tuple(status.value for status in JobStatus)


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
    job = await jobs.get(services(request).db.reader, request.path_params["job_id"])
    if job is None or not caller.can_see(job.owner_key_id):
        raise NotFound(f"no job {request.path_params['job_id']!r}")
    return JSONResponse(job.to_document(services(request).publisher.file_url))


async def list_jobs(request: Request) -> Response:
    caller = await authenticate(request, "jobs:read")
    limit = limit_param(request)
    page = await jobs.list_page(
        services(request).db.reader,
        owner_key_id=caller.owner_filter,
        status=choice_param(request, "status", _STATUSES),
        model=choice_param(request, "model", tuple(MODELS)),
        before_id=request.query_params.get("cursor"),
        limit=limit + 1,
    )
    more = len(page) > limit
    page = page[:limit]
    file_url = services(request).publisher.file_url
    return JSONResponse(
        {
            "data": [job.to_document(file_url) for job in page],
            "next_cursor": page[-1].id if more else None,
        }
    )
