"""The jobs pages: a filterable list, and one job with its timeline and its video."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from service.console.live import follow
from service.console.view import Form, View
from service.core import params
from service.core.errors import ProviderFailed, ProviderUnavailable, ValidationFailed
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


def _available_models(view: View) -> list[dict[str, Any]]:
    """The catalog as ``GET /v1/models`` serves it, for models whose provider is configured."""
    endpoints = view.state.endpoints
    return [spec.describe() for spec in MODELS.values() if spec.provider in endpoints]


def input_from_form(form: Form, model: dict[str, Any]) -> dict[str, Any]:
    """The job's ``input`` from the playground form: each parameter of ``model`` that was filled
    in, read as its type says (an empty field is left out, so the model's default applies)."""
    job_input: dict[str, Any] = {}
    for name, spec in model["parameters"].items():
        raw = form.get(f"p_{name}").strip()
        if not raw:
            continue
        kind = spec["type"]
        try:
            if kind == "integer":
                job_input[name] = int(raw)
            elif kind == "number":
                job_input[name] = float(raw) if "." in raw else int(raw)
            elif kind == "boolean":
                job_input[name] = raw == "true"
            elif kind in ("object", "array"):
                job_input[name] = json.loads(raw)
            else:
                job_input[name] = raw
        except ValueError:
            raise ValidationFailed.field(f"input.{name}", f"must be a {kind}") from None
    return job_input


async def new_job_page(view: View) -> Response:
    return _new_job(view, view.request.query_params.get("model", ""))


def _new_job(view: View, chosen: str, *, status_code: int = 200, **extra: Any) -> Response:
    models = _available_models(view)
    model = next((m for m in models if m["id"] == chosen), models[0] if models else None)
    return view.render(
        "new_job.html",
        status_code=status_code,
        section="jobs",
        models=models,
        model=model,
        values=extra.pop("values", {}),
        **extra,
    )


async def submit_job(view: View) -> Response:
    """The playground's POST: the same submission as ``POST /v1/jobs``, then a redirect to the
    job's page (a reload shows the job again; it does not submit another)."""
    form = view.form
    models = _available_models(view)
    model = next((m for m in models if m["id"] == form.get("model")), None)
    if model is None:
        return _new_job(view, "", status_code=422, problem="Choose a model.")
    try:
        body: dict[str, Any] = {"model": model["id"], "input": input_from_form(form, model)}
        if form.get("metadata").strip():
            try:
                body["metadata"] = json.loads(form.get("metadata"))
            except ValueError:
                raise ValidationFailed.field("metadata", "must be a JSON object") from None
        created = await view.state.submitter.create(
            view.signed_in_caller.key_id, body, form.get("idempotency_key") or None
        )
    except (ValidationFailed, ProviderFailed, ProviderUnavailable) as error:
        values = {key: form.get(key) for key in form.names()}
        return _new_job(
            view, model["id"], status_code=error.status_code, problem=error.message, values=values
        )
    return view.redirect(f"/console/jobs/{created.job.id}", "submitted")
