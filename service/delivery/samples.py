"""Sample events, one per event type, for automation tools that show fields before the first
real event (Zapier's ``performList``, n8n's pinned data).

They are built by the code that builds real events — a ``Job`` rendered by ``to_document`` and
wrapped by ``events.payload`` — so a sample has exactly the shape a subscriber will receive.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from service.core.ids import new_id
from service.core.models import (
    EVENT_TYPES,
    JOB_EVENT_TYPES,
    Cost,
    ErrorKind,
    FileUrl,
    Job,
    JobError,
    JobStatus,
    Output,
    Subscription,
    SubscriptionStatus,
)
from service.delivery.filters import FieldTree, field_tree
from service.delivery.publisher import payload, ping_data, subscription_disabled_data
from service.jobs.catalog import MODELS

SAMPLE_MODEL = "trinetra/kling-v3"
_SAMPLE_VIDEO = hashlib.sha256(b"reelhook sample video").hexdigest()
_ERRORS = {
    JobStatus.FAILED: JobError(
        ErrorKind.CONTENT_POLICY, "The prompt was refused by the provider's content policy.", "400"
    ),
    JobStatus.EXPIRED: JobError(
        ErrorKind.TIMEOUT, "No terminal callback arrived before the job's deadline."
    ),
}


def sample_event(event_type: str, *, now: float, file_url: FileUrl) -> dict[str, Any]:
    """A sample of ``event_type`` as ``GET /v1/events`` lists it: ``id`` (what subscribers get as
    ``webhook-id``) and the exact delivered body, ``type``, ``timestamp`` and ``data``."""
    if event_type in JOB_EVENT_TYPES:
        data = _sample_job(JobStatus(event_type.removeprefix("job.")), now).to_document(file_url)
    elif event_type == "ping":
        data = ping_data(new_id("sub"))
    elif event_type == "subscription.disabled":
        data = subscription_disabled_data(_sample_subscription(now))
    else:
        raise ValueError(f"no sample for {event_type!r}")
    return {"id": new_id("evt"), **json.loads(payload(event_type, now, data))}


def _sample_job(status: JobStatus, now: float) -> Job:
    spec = MODELS[SAMPLE_MODEL]
    # With a resolution, so the sample's cost has the plain shape most events carry.
    clean = spec.validate(
        {"prompt": "A drone shot over misty mountains at sunrise", "resolution": "720p"}
    )
    estimated = round(spec.price.estimate(clean), 4)
    started = now - 95.0
    terminal = status.terminal
    succeeded = status is JobStatus.SUCCEEDED
    return Job(
        id=new_id("job"),
        owner_key_id="key_sample",
        model=spec.id,
        provider=spec.provider,
        status=status,
        input=clean,
        cost=Cost(
            estimated,
            spec.price.unit,
            charged=estimated if succeeded else (0 if terminal else None),
            assumed=spec.price.assumes(clean),
        ),
        created_at=started,
        deadline_at=started + 3600,
        metadata={"chat_id": 42},
        provider_job_id="job_klingv3_5a1e2c3d4b6f",
        outputs=(
            (Output("https://cdn.example.com/videos/sample.mp4", "video", _SAMPLE_VIDEO),)
            if succeeded
            else ()
        ),
        error=_ERRORS.get(status),
        submitted_at=started + 0.4,
        completed_at=now if terminal else None,
    )


def _sample_subscription(now: float) -> Subscription:
    return Subscription(
        id=new_id("sub"),
        owner_key_id="key_sample",
        url="https://example.org/hooks/reelhook",
        secret="",
        event_types=("job.succeeded", "job.failed"),
        models=(),
        headers={},
        description="disabled after failing continuously",
        status=SubscriptionStatus.DISABLED,
        created_at=now - 6 * 86400,
        updated_at=now,
    )


# Free-form parts of an event: a job's own metadata and its model's input parameters.
_OPEN_FIELDS = ("data.metadata", "data.input")


def event_fields() -> FieldTree:
    """Every field an event body can have, from one sample of each event type; payload filters
    are validated against it (a path no event has is refused)."""

    def link(digest: str, media_type: str) -> str:
        return f"https://reelhook.example/v1/files/{digest}"

    bodies = []
    for event_type in EVENT_TYPES:
        sample = sample_event(event_type, now=0.0, file_url=link)
        bodies.append({key: value for key, value in sample.items() if key != "id"})
    return field_tree(bodies, _OPEN_FIELDS)
