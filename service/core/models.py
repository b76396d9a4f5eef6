"""The domain records reelhook stores and serves: jobs, subscriptions, provider updates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.core.clock import isoformat
from service.core.signing_keys import public_key, scheme_of

FileUrl = Callable[[str, str], str]
"""Mints a link to a stored file from its digest and media type."""


class JobStatus(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
)


# The SQL in service/storage spells these values as literals (SQLite matches partial indexes on
# literals only); tests/test_bodies.py checks every status literal there is one of these.


class SubscriptionStatus(StrEnum):
    """An active subscription receives deliveries; a disabled one holds them until enabled."""

    ACTIVE = "active"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    """queued (a FIFO subscription's, behind the delivery ahead of it), pending (waiting for its
    next attempt), inflight, succeeded, failed (retries exhausted) or canceled (its subscription
    was deleted)."""

    QUEUED = "queued"
    PENDING = "pending"
    INFLIGHT = "inflight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def under_way(self) -> bool:
        """Whether an attempt is still to come (or running) without anyone asking for it."""
        return self in (DeliveryStatus.QUEUED, DeliveryStatus.PENDING, DeliveryStatus.INFLIGHT)


class MirrorStatus(StrEnum):
    """A download of a job's output into the blob store: pending until it is done or failed."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class ErrorKind(StrEnum):
    INVALID_INPUT = "invalid_input"
    CONTENT_POLICY = "content_policy"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    RATE_LIMITED = "rate_limited"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    CANCELED = "canceled"  # POST /v1/jobs/{id}/cancel


JOB_EVENT_TYPES = (
    "job.submitted",
    "job.running",
    "job.succeeded",
    "job.failed",
    "job.expired",
    "job.canceled",
)
EVENT_TYPES = (*JOB_EVENT_TYPES, "subscription.disabled", "ping")


def event_type_for(status: JobStatus) -> str | None:
    """The job event announcing a move into ``status`` (None for ``pending``)."""
    name = f"job.{status.value}"
    return name if name in JOB_EVENT_TYPES else None


@dataclass(frozen=True, slots=True)
class JobError:
    kind: ErrorKind
    message: str
    provider_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "provider_code": self.provider_code,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        return cls(ErrorKind(data["kind"]), data["message"], data.get("provider_code"))


@dataclass(frozen=True, slots=True)
class Output:
    """One produced file: the provider's URL, or reelhook's own copy (``blob``, a SHA-256 digest)
    served by expiring ``/v1/files/`` links that are minted afresh whenever a job is rendered.
    ``mirror_error`` says why a provider-hosted file could not be copied."""

    url: str | None
    type: str = "video"
    blob: str | None = None
    media_type: str = "video/mp4"
    mirror_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form."""
        data: dict[str, Any] = {
            "url": self.url,
            "type": self.type,
            "blob": self.blob,
            "media_type": self.media_type,
        }
        if self.mirror_error is not None:
            data["mirror_error"] = self.mirror_error
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Output:
        return cls(
            data.get("url"),
            data.get("type", "video"),
            data.get("blob"),
            data.get("media_type", "video/mp4"),
            data.get("mirror_error"),
        )

    def public(self, file_url: FileUrl) -> dict[str, Any]:
        """The form in job documents: ``url`` falls back to the mirror when there is no other."""
        mirror = file_url(self.blob, self.media_type) if self.blob else None
        data: dict[str, Any] = {"url": self.url or mirror, "type": self.type}
        if mirror is not None:
            data["mirror_url"] = mirror
        if self.mirror_error is not None:
            data["mirror_error"] = self.mirror_error
        return data


@dataclass(frozen=True, slots=True)
class Cost:
    """``estimated`` from the model's price table; ``charged`` as the provider reported it.

    ``assumed`` names what the estimate assumed that the input left to the provider (e.g. the
    resolution a Trinetra price depends on but nobody chose). ``charged_unknown`` is set when the
    provider may have billed but gave no figure (a held request that failed after it started, a
    job that never reported back): then ``charged`` is null, never a confident 0. Both keys appear
    in the document only when they say something.
    """

    estimated: float
    unit: str
    charged: float | None = None
    assumed: Mapping[str, Any] = field(default_factory=dict)
    charged_unknown: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "estimated": self.estimated,
            "charged": self.charged,
            "unit": self.unit,
        }
        if self.assumed:
            data["assumed"] = dict(self.assumed)
        if self.charged_unknown:
            data["charged_unknown"] = True
        return data

    def with_charge(self, charged: float | None, *, unknown: bool) -> Cost:
        """This cost with ``charged`` and ``charged_unknown`` set, every other field carried
        over: built directly, where ``dataclasses.replace`` walked the class's fields on every
        terminal callback (~2 µs; docs/performance-journal.md, "The ingest path's sixth pass")."""
        return Cost(self.estimated, self.unit, charged, self.assumed, unknown)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        return cls(
            data["estimated"],
            data["unit"],
            data.get("charged"),
            dict(data.get("assumed") or {}),
            bool(data.get("charged_unknown", False)),
        )


@dataclass(frozen=True, slots=True)
class Notice:
    """Something about a job its status cannot say, kept on the job for whoever reads it.

    ``kind``: ``unknown_status`` (the provider used a status word reelhook does not know; the job
    stayed open), ``unreadable_callback`` (a verified callback whose body reelhook could not read;
    the body is in the audit log), ``late_result`` (the provider reported a success after the job
    had already ended failed, expired or canceled; ``outputs`` holds what it delivered).
    """

    kind: str
    message: str
    at: float
    outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``at`` in epoch seconds)."""
        data: dict[str, Any] = {"kind": self.kind, "message": self.message, "at": self.at}
        if self.outputs:
            data["outputs"] = list(self.outputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Notice:
        return cls(data["kind"], data["message"], data["at"], tuple(data.get("outputs", ())))

    def public(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "message": self.message}
        data["at"] = isoformat(self.at)
        if self.outputs:
            data["outputs"] = [{"url": url, "type": "video"} for url in self.outputs]
        return data


MAX_NOTICES = 20
"""Notices kept per job: the first ones, then the newest (a chatty provider cannot grow a row)."""


def with_notice(notices: tuple[Notice, ...], notice: Notice) -> tuple[Notice, ...]:
    """``notices`` plus ``notice``, bounded by :data:`MAX_NOTICES` (the oldest extra is dropped)."""
    kept = (*notices, notice)
    if len(kept) > MAX_NOTICES:
        kept = (*kept[: MAX_NOTICES - 1], kept[-1])
    return kept


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    owner_key_id: str
    model: str
    provider: str
    status: JobStatus
    input: dict[str, Any]
    cost: Cost
    created_at: float
    deadline_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    provider_job_id: str | None = None
    outputs: tuple[Output, ...] = ()
    error: JobError | None = None
    submitted_at: float | None = None
    completed_at: float | None = None
    notices: tuple[Notice, ...] = ()

    def to_document(self, file_url: FileUrl) -> dict[str, Any]:
        """The normalized job document served by the API and carried by every job event.

        ``file_url(digest, media_type)`` mints the link to a stored output.
        """
        return {
            "id": self.id,
            "object": "job",
            "model": self.model,
            "provider": self.provider,
            "provider_job_id": self.provider_job_id,
            "status": self.status.value,
            "input": self.input,
            "outputs": [output.public(file_url) for output in self.outputs],
            "error": self.error.to_dict() if self.error else None,
            "cost": self.cost.to_dict(),
            "metadata": self.metadata,
            "created_at": isoformat(self.created_at),
            "submitted_at": isoformat(self.submitted_at),
            "completed_at": isoformat(self.completed_at),
            "notices": [notice.public() for notice in self.notices],
        }


@dataclass(frozen=True, slots=True)
class ProviderUpdate:
    """What one callback (or Segmind's held answer) says about a job, in reelhook's vocabulary."""

    provider_job_id: str | None
    status: JobStatus
    outputs: tuple[Output, ...] = ()
    error: JobError | None = None
    charged: float | None = None
    #: The provider's own status word when reelhook does not know it (``status`` is then only a
    #: reading of the rest of the body: a success with outputs, a failure with an error, or, with
    #: neither, a non-terminal update that leaves the job open).
    unknown_status: str | None = None
    #: ``external_task_id`` (Trinetra, Kling) echoed back: reelhook sends its own job id there.
    external_id: str | None = None
    #: The provider may have billed this failure but said nothing (``charged`` is then None).
    charge_unknown: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    owner_key_id: str
    url: str
    secret: str
    event_types: tuple[str, ...]
    models: tuple[str, ...]
    headers: dict[str, str]
    description: str
    status: SubscriptionStatus
    created_at: float
    updated_at: float
    job_id: str | None = None
    previous_secret: str | None = None
    previous_secret_until: float | None = None
    failing_since: float | None = None
    disabled_reason: str | None = None
    filter: dict[str, Any] | None = None
    """A payload filter (service/delivery/filters.py), as given; None: every matching event."""
    template: str | None = None
    """A body template (service/delivery/transform.py); None: the event body as JSON."""
    content_type: str = "application/json"
    """The Content-Type of each delivery (what the template produces)."""
    ordering: str = "none"
    """``fifo``: one delivery in flight at a time, in event order (docs/ordered-delivery.md)."""

    @property
    def signature_scheme(self) -> str:
        return scheme_of(self.secret)

    def matches(self, event_type: str, model: str | None, job_id: str | None) -> bool:
        """Whether an event of ``event_type`` about a job of ``model`` goes to this subscription."""
        if self.status != SubscriptionStatus.ACTIVE:
            return False
        if self.job_id is not None and self.job_id != job_id:
            return False
        if self.event_types:
            if event_type not in self.event_types:
                return False
        elif not event_type.startswith("job.") and event_type != "subscription.disabled":
            # An empty filter means every job event; pings are addressed explicitly.
            return False
        return not (self.models and model is not None and model not in self.models)

    def to_public(self, *, include_secret: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "subscription",
            "url": self.url,
            "event_types": list(self.event_types),
            "models": list(self.models),
            "headers": {name: "********" for name in self.headers},
            "description": self.description,
            "status": self.status.value,
            "disabled_reason": self.disabled_reason,
            "failing_since": isoformat(self.failing_since),
            "previous_secret_expires_at": (
                isoformat(self.previous_secret_until) if self.previous_secret else None
            ),
            "filter": self.filter,
            "template": self.template,
            "content_type": self.content_type,
            "ordering": self.ordering,
            "signature_scheme": self.signature_scheme,
            # Ed25519 (v1a): what subscribers verify with; the signing key is never shown.
            "public_key": public_key(self.secret),
            "previous_public_key": (
                public_key(self.previous_secret) if self.previous_secret else None
            ),
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }
        if include_secret:
            # A v1 secret is shared with the subscriber (shown once); a v1a key stays here.
            data["secret"] = self.secret if self.signature_scheme == "v1" else None
        return data
