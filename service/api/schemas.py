"""JSON Schemas of the documents the API answers with, referenced by ``ref(name)``.

The documents themselves are built by the models (``Job.to_document``, ``Subscription.to_public``,
``ModelSpec.describe``) and by the domain modules (``service.delivery.deliveries``,
``service.access.keys``); enumerations come from the same constants the code checks against, and
the job request is derived from the model specs. The schemathesis test validates every answer
against these schemas, so a document that drifts from its schema fails the suite.
"""

from __future__ import annotations

from typing import Any

from service.access.scopes import SCOPES
from service.app.settings import PROVIDERS
from service.core.models import (
    EVENT_TYPES,
    JOB_EVENT_TYPES,
    DeliveryStatus,
    ErrorKind,
    JobStatus,
    SubscriptionStatus,
)
from service.core.signing_keys import SCHEMES
from service.delivery.transform import CONTENT_TYPES
from service.jobs.catalog import MODELS
from service.jobs.submission import JOB_EXTRAS

Schema = dict[str, Any]

_PREFIX = "#/components/schemas/"


def ref(name: str) -> Schema:
    return {"$ref": _PREFIX + name}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def page_of(item: Schema) -> Schema:
    """A list answer: ``{"data": [...], "next_cursor": "..." | null}``."""
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": item},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
        },
    }


def _obj(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


_TIME = {"type": "string", "format": "date-time"}
_SCALAR = {"type": ["string", "number", "boolean", "null"], "maxLength": 1000}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}


def model_request_name(model_id: str) -> str:
    return "JobRequest." + model_id.replace("/", ".")


def _job_request(model_id: str) -> Schema:
    return {
        "type": "object",
        "title": f"A {model_id} job",
        "required": ["model", "input"],
        "additionalProperties": False,
        "properties": {
            "model": {"const": model_id},
            "input": MODELS[model_id].input_schema(),
            **JOB_EXTRAS.schema()["properties"],
        },
    }


def components() -> dict[str, Schema]:
    """Every schema ``ref()`` may name."""
    job_events = [t for t in EVENT_TYPES if t in JOB_EVENT_TYPES]
    schemas: dict[str, Schema] = {
        "Error": _obj(
            ["error"],
            error=_obj(
                ["code", "message"],
                code={"type": "string", "examples": ["validation_failed"]},
                message={"type": "string"},
                details={"type": "object", "description": "e.g. `fields`: problem per field"},
            ),
        ),
        "JobRequest": {
            "description": "A job for one model; `input` takes that model's parameters "
            "(GET /v1/models lists them).",
            "oneOf": [ref(model_request_name(m)) for m in MODELS],
            "discriminator": {
                "propertyName": "model",
                "mapping": {m: _PREFIX + model_request_name(m) for m in MODELS},
            },
        },
        **{model_request_name(m): _job_request(m) for m in MODELS},
        "Output": _obj(
            ["url", "type"],
            url={
                "type": ["string", "null"],
                "description": "The provider's URL, or reelhook's copy when it has no other.",
            },
            type={"type": "string", "examples": ["video"]},
            mirror_url={
                "type": "string",
                "description": "reelhook's own copy (GET /v1/files/…): a signed, expiring link "
                "minted afresh whenever the job is rendered.",
            },
        ),
        "JobError": _obj(
            ["kind", "message", "provider_code"],
            kind={"enum": [kind.value for kind in ErrorKind]},
            message={"type": "string"},
            provider_code={"type": ["string", "null"]},
        ),
        "Job": _obj(
            [
                "id",
                "object",
                "model",
                "provider",
                "provider_job_id",
                "status",
                "input",
                "outputs",
                "error",
                "cost",
                "metadata",
                "created_at",
                "submitted_at",
                "completed_at",
                "notices",
            ],
            id={"type": "string", "pattern": "^job_"},
            object={"const": "job"},
            model={"enum": list(MODELS)},
            provider={"enum": list(PROVIDERS)},
            provider_job_id={"type": ["string", "null"]},
            status={"enum": list(JobStatus)},
            input={
                "type": "object",
                "description": "The input as validated, with the defaults the provider's page "
                "documents; what neither the caller nor the page set is left out (and left to "
                "the provider).",
            },
            outputs={"type": "array", "items": ref("Output")},
            error=nullable(ref("JobError")),
            cost=_obj(
                ["estimated", "charged", "unit"],
                estimated={"type": "number"},
                charged={"type": ["number", "null"]},
                unit={"type": "string", "examples": ["credits", "usd"]},
                assumed={
                    "type": "object",
                    "description": "What the estimate assumed that the input left to the "
                    'provider, e.g. {"resolution": "720p"}. Absent when nothing was.',
                },
                charged_unknown={
                    "const": True,
                    "description": "The provider may have billed but gave no figure (a held "
                    "request that failed after it started, a job never heard from): `charged` "
                    "is null. Absent otherwise.",
                },
            ),
            metadata={"type": "object"},
            created_at=_TIME,
            submitted_at=_MAYBE_TIME,
            completed_at=_MAYBE_TIME,
            notices={
                "type": "array",
                "description": "What the status cannot say: `unknown_status` (a status word "
                "reelhook does not know; the job stayed open), `unreadable_callback` (a verified "
                "callback that could not be read; kept for audit), `late_result` (a success "
                "after the job had ended; its outputs are listed).",
                "items": _obj(
                    ["kind", "message", "at"],
                    kind={"enum": ["unknown_status", "unreadable_callback", "late_result"]},
                    message={"type": "string"},
                    at=_TIME,
                    outputs={"type": "array", "items": ref("Output")},
                ),
            },
        ),
        "CreatedJob": {
            "allOf": [ref("Job")],
            "properties": {
                "callback_secret": {
                    "type": "string",
                    "description": "Only when callback_url was given, and only in this answer.",
                }
            },
        },
        "Subscription": _obj(
            [
                "id",
                "object",
                "url",
                "event_types",
                "models",
                "headers",
                "description",
                "status",
                "created_at",
                "updated_at",
            ],
            id={"type": "string", "pattern": "^sub_"},
            object={"const": "subscription"},
            url={"type": "string"},
            event_types={"type": "array", "items": {"enum": list(EVENT_TYPES)}},
            models={"type": "array", "items": {"enum": list(MODELS)}},
            headers={
                "type": "object",
                "additionalProperties": {"const": "********"},
                "description": "Static headers sent with each delivery; values are masked.",
            },
            description={"type": "string"},
            status={"enum": list(SubscriptionStatus)},
            disabled_reason={
                "type": ["string", "null"],
                "description": "Why it is disabled (failing for too long, or through the API).",
            },
            failing_since={
                **_MAYBE_TIME,
                "description": "Since when every attempt has failed; null while it succeeds.",
            },
            previous_secret_expires_at={
                **_MAYBE_TIME,
                "description": "After a secret rotation: until when the replaced secret still "
                "signs each message too.",
            },
            filter=nullable(ref("PayloadFilter")),
            template={
                "type": ["string", "null"],
                "description": "The body template (Jinja2, sandboxed); null sends the event.",
            },
            content_type={"enum": list(CONTENT_TYPES)},
            ordering={
                "enum": ["none", "fifo"],
                "description": "fifo: one delivery in flight at a time, in event order; a "
                "failing delivery holds back the ones behind it until it succeeds or its retries "
                "are exhausted.",
            },
            signature_scheme={
                "enum": list(SCHEMES),
                "description": "v1: HMAC-SHA256 with the shared secret; v1a: Ed25519, verified "
                "with public_key.",
            },
            public_key={
                "type": ["string", "null"],
                "pattern": "^whpk_",
                "description": "v1a: the Ed25519 public key (base64) that verifies signatures.",
            },
            previous_public_key={
                "type": ["string", "null"],
                "pattern": "^whpk_",
                "description": "v1a, after a rotation: the replaced key's public key, which "
                "verifies the second signature until previous_secret_expires_at.",
            },
            created_at=_TIME,
            updated_at=_TIME,
        ),
        "PayloadFilter": {
            "description": "Which events to deliver, tested on the delivered body: a condition "
            "on one field (path: dot-separated keys from the body's root, e.g. "
            "data.metadata.channel; a number picks a list item) with one operator, or all/any/not "
            "of filters.",
            "oneOf": [
                {
                    "type": "object",
                    "required": ["path"],
                    "minProperties": 2,
                    "maxProperties": 2,
                    "properties": {
                        "path": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 200,
                            "examples": ["data.metadata.channel"],
                        },
                        **{op: _SCALAR for op in ("eq", "ne")},
                        "in": {"type": "array", "items": _SCALAR, "minItems": 1, "maxItems": 100},
                        "exists": {"type": "boolean"},
                        **{op: {"type": "number"} for op in ("gt", "gte", "lt", "lte")},
                    },
                    "additionalProperties": False,
                },
                *(
                    {
                        **_obj(
                            [key],
                            **{
                                key: {"type": "array", "items": ref("PayloadFilter"), "minItems": 1}
                            },
                        ),
                        "additionalProperties": False,
                    }
                    for key in ("all", "any")
                ),
                {**_obj(["not"], **{"not": ref("PayloadFilter")}), "additionalProperties": False},
            ],
        },
        "DisabledSubscription": _obj(
            ["id", "object", "description", "status", "disabled_reason", "failing_since"],
            id={"type": "string", "pattern": "^sub_"},
            object={"const": "subscription"},
            description={"type": "string"},
            status={"enum": list(SubscriptionStatus)},
            disabled_reason={"type": ["string", "null"]},
            failing_since=_MAYBE_TIME,
            event_types={"type": "array", "items": {"enum": list(EVENT_TYPES)}},
            models={"type": "array", "items": {"enum": list(MODELS)}},
        ),
        "CreatedSubscription": {
            "allOf": [ref("Subscription")],
            "required": ["secret"],
            "properties": {
                "secret": {
                    "type": ["string", "null"],
                    "pattern": "^whsec_",
                    "description": "v1: verifies the Standard Webhooks signatures; shown only "
                    "here. Null for v1a, whose signing key never leaves reelhook (verify with "
                    "public_key).",
                }
            },
        },
        "Ping": _obj(["subscription_id"], subscription_id={"type": "string"}),
        "Event": {
            "description": "One entry of the event log: `id` (sent to subscribers as "
            "`webhook-id`) and the exact body subscribers receive.",
            "oneOf": [ref(_event_name(t)) for t in EVENT_TYPES],
        },
        **{_event_name(t): _event(t, ref("Job")) for t in job_events},
        _event_name("ping"): _event("ping", ref("Ping")),
        _event_name("subscription.disabled"): _event(
            "subscription.disabled", event_data("subscription.disabled")
        ),
        "EventPayload": {
            "description": "The body subscribers receive (the event without its `id`, which "
            "travels as `webhook-id`).",
            "oneOf": [event_body(t, event_data(t)) for t in EVENT_TYPES],
        },
        "Delivery": _obj(
            [
                "id",
                "object",
                "event_id",
                "event_type",
                "job_id",
                "subscription_id",
                "status",
                "attempt_count",
                "next_attempt_at",
                "last_status_code",
                "last_error",
                "created_at",
                "updated_at",
            ],
            id={"type": "string", "pattern": "^dlv_"},
            object={"const": "delivery"},
            event_id={"type": "string", "pattern": "^evt_"},
            event_type={"enum": list(EVENT_TYPES)},
            job_id={"type": ["string", "null"], "description": "Null for events about no job."},
            subscription_id={"type": "string", "pattern": "^sub_"},
            status={
                "enum": list(DeliveryStatus),
                "description": "pending (waiting for its next attempt), inflight, succeeded, "
                "failed (retries exhausted) or canceled (its subscription was deleted).",
            },
            attempt_count={"type": "integer", "minimum": 0},
            next_attempt_at={
                **_MAYBE_TIME,
                "description": "When the next attempt is due, while pending.",
            },
            last_status_code={
                "type": ["integer", "null"],
                "description": "The subscriber's HTTP status in the last attempt.",
            },
            last_error={
                "type": ["string", "null"],
                "description": "Why the last attempt failed, when it did.",
            },
            created_at=_TIME,
            updated_at=_TIME,
        ),
        "DeliveryAttempt": _obj(
            [
                "attempted_at",
                "status_code",
                "latency_ms",
                "error",
                "response_body",
                "response_body_encoding",
            ],
            attempted_at=_TIME,
            status_code={
                "type": ["integer", "null"],
                "description": "The subscriber's HTTP status; null when no answer came.",
            },
            latency_ms={"type": "number", "minimum": 0},
            error={"type": ["string", "null"]},
            response_body={
                "type": ["string", "null"],
                "description": "The start of the subscriber's answer (at most 20 kB).",
            },
            response_body_encoding={
                "enum": ["utf-8", "base64", None],
                "description": "base64 when the answer is not UTF-8 text.",
            },
        ),
        "DeliveryDetail": {
            "allOf": [ref("Delivery")],
            "required": ["payload", "attempts"],
            "properties": {
                "payload": nullable(ref("EventPayload")),
                "attempts": {
                    "type": "array",
                    "items": ref("DeliveryAttempt"),
                    "description": "Every attempt, oldest first.",
                },
            },
        },
        "ApiKey": _obj(
            ["id", "name", "scopes", "created_at", "revoked_at"],
            id={"type": "string", "pattern": "^key_"},
            name={"type": "string"},
            scopes={"type": "array", "items": {"enum": list(SCOPES)}},
            created_at=_TIME,
            revoked_at={**_MAYBE_TIME, "description": "Null while the key is active."},
        ),
        "CreatedApiKey": {
            "allOf": [ref("ApiKey")],
            "required": ["key"],
            "properties": {
                "key": {
                    "type": "string",
                    "pattern": "^rh_",
                    "description": "The key to send as X-API-Key; shown only here.",
                }
            },
        },
        "Model": _obj(
            ["id", "object", "provider", "parameters", "pricing", "available", "simulated"],
            id={"enum": list(MODELS)},
            object={"const": "model"},
            provider={"enum": list(PROVIDERS)},
            description={"type": "string"},
            parameters={"type": "object", "additionalProperties": {"type": "object"}},
            pricing=_obj(["unit", "table"], unit={"type": "string"}, table={"type": "object"}),
            notes={"type": "array", "items": {"type": "string"}},
            available={"type": "boolean"},
            simulated={"type": "boolean"},
        ),
    }
    return schemas


def _event_name(event_type: str) -> str:
    return "Event." + event_type


def event_body(event_type: str, data: Schema) -> Schema:
    """The body a subscriber receives for ``event_type`` (also the webhook's documentation)."""
    return _obj(
        ["type", "timestamp", "data"],
        type={"const": event_type},
        timestamp=_TIME,
        data=data,
    )


def _event(event_type: str, data: Schema) -> Schema:
    body = event_body(event_type, data)
    body["required"] = ["id", *body["required"]]
    body["properties"] = {"id": {"type": "string", "pattern": "^evt_"}, **body["properties"]}
    return body


def event_data(event_type: str) -> Schema:
    """The schema of ``data`` in an event of ``event_type``."""
    if event_type in JOB_EVENT_TYPES:
        return ref("Job")
    return ref("Ping") if event_type == "ping" else ref("DisabledSubscription")
