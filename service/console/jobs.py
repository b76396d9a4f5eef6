"""The jobs pages: a filterable list, and one job with its timeline and its video."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.responses import Response

from service.console.live import follow
from service.console.view import View
from service.core import params
from service.core.models import JobStatus
from service.jobs.catalog import MODELS
from service.jobs.listing import job_filter

FILTERS = ("status", "model", "since", "until")


async def jobs_page(view: View) -> Response:
    query = view.request.query_params
    page = await view.state.jobs.page(
        view.signed_in_caller,
        job_filter(query),
        cursor=query.get("cursor"),
        limit=params.limit(query),
    )
    next_cursor = page.next_cursor
    filters = {name: view.request.query_params.get(name, "") for name in FILTERS}
    chosen = {name: value for name, value in filters.items() if value}
    next_link = None
    if next_cursor is not None:
        next_link = "?" + urlencode({**chosen, "cursor": next_cursor})
    file_url = view.state.publisher.file_url
    return view.render(
        "jobs.html",
        section="jobs",
        jobs=[job.to_document(file_url) for job in page.items],
        filters=filters,
        statuses=tuple(JobStatus),
        models=tuple(MODELS),
        next_link=next_link,
        first_page=view.request.query_params.get("cursor") is None,
        first_link="?" + urlencode(chosen),
        live=await follow(view),
    )


async def job_page_view(view: View) -> Response:
    state = view.state
    job = await state.jobs.find(view.signed_in_caller, view.request.path_params["job_id"])
    moments = await state.jobs.timeline(job)
    return view.render(
        "job.html",
        section="jobs",
        job=job.to_document(state.publisher.file_url),
        terminal=job.status.terminal,
        moments=moments,
        live=None if job.status.terminal else await follow(view),
    )
