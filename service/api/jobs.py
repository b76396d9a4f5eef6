"""``/v1/jobs``: submit a job, read one, list them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.scopes import Scope
from service.api.context import authenticate, read_json
from service.api.operation import OPTIONAL_TIME, Param, Reply, id_cursor, limit_query, operation
from service.api.schemas import page_of, ref
from service.app.services import services
from service.core import params
from service.core.errors import Conflict, NotFound, ValidationFailed
from service.core.models import JobStatus
from service.jobs import lifecycle
from service.jobs.catalog import MODELS
from service.jobs.listing import job_filter


@operation(
    summary="Submit a job",
    tag="jobs",
    body=ref("JobRequest"),
    params=(
        Param(
            "Idempotency-Key",
            "header",
            {"type": "string", "minLength": 1, "maxLength": 255},
            "The same key and body within 24 h return the same job; another body is a 409.",
        ),
    ),
    replies={
        202: Reply(
            "Stored and accepted by the provider (or queued for a held Segmind request).",
            ref("CreatedJob"),
            headers={
                "Location": "The job's URL.",
                "Idempotent-Replayed": "`true` when an earlier job was returned for the key.",
            },
        )
    },
    errors=(409, 502, 503),
)
async def create_job(request: Request) -> Response:
    """Validate the input against the model's spec, store the job and submit it to the provider
    with a callback URL pointing back at reelhook. Events follow as the job moves on."""
    caller = await authenticate(request, Scope.JOBS_WRITE)
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


@operation(
    summary="Get a job",
    tag="jobs",
    replies={200: Reply("The job document.", ref("Job"))},
    errors=(404,),
)
async def get_job(request: Request) -> Response:
    """The job as it is now; outputs carry fresh file links."""
    caller = await authenticate(request, Scope.JOBS_READ)
    job = await services(request).jobs.find(caller, request.path_params["job_id"])
    return JSONResponse(job.to_document(services(request).publisher.file_url))


@operation(
    summary="Cancel a job",
    tag="jobs",
    replies={200: Reply("The job, now canceled.", ref("Job"))},
    errors=(404, 409),
)
async def cancel_job(request: Request) -> Response:
    """Stop waiting for an unfinished job: it becomes `canceled` and `job.canceled` is sent. The
    provider is not told (none offers a cancel call) and may still finish; a result arriving
    later is stored for audit and changes nothing. 409 when the job has already finished."""
    caller = await authenticate(request, Scope.JOBS_WRITE)
    state = services(request)
    job_id = request.path_params["job_id"]
    await state.jobs.find(caller, job_id)  # 404 for another key's job
    try:
        canceled = await lifecycle.cancel(state.db, state.publisher, job_id, state.clock())
    except lifecycle.NotCancelable as exc:
        raise Conflict(
            f"the job has already finished ({exc}); only an unfinished job can be canceled"
        ) from None
    if canceled is None:
        raise NotFound(f"no job {job_id!r}")
    return JSONResponse(canceled.to_document(state.publisher.file_url))


@operation(
    summary="List jobs",
    tag="jobs",
    params=(
        Param("status", "query", {"enum": list(JobStatus)}, "Only jobs in this status."),
        Param("model", "query", {"enum": list(MODELS)}, "Only jobs of this model."),
        Param(
            "since",
            "query",
            OPTIONAL_TIME,
            "Only jobs created at or after this time: ISO 8601 (UTC without an offset) or Unix "
            "seconds.",
        ),
        Param(
            "until",
            "query",
            OPTIONAL_TIME,
            "Only jobs created before this time: ISO 8601 (UTC without an offset) or Unix seconds.",
        ),
        id_cursor("job"),
        limit_query(50, 200),
    ),
    replies={200: Reply("Jobs, newest first.", page_of(ref("Job")))},
    errors=(422,),
)
async def list_jobs(request: Request) -> Response:
    """Your jobs (an admin key sees everyone's), newest first."""
    caller = await authenticate(request, Scope.JOBS_READ)
    query = request.query_params
    state = services(request)
    page = await state.jobs.page(
        caller, job_filter(query), cursor=params.cursor(query, "job"), limit=params.limit(query)
    )
    file_url = state.publisher.file_url
    return JSONResponse(
        {"data": [job.to_document(file_url) for job in page.items], "next_cursor": page.next_cursor}
    )
