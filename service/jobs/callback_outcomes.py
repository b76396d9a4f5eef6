"""Every way an inbound provider callback can end, named once.

Each callback ends in exactly one :class:`CallbackOutcome`, and :mod:`service.jobs.callbacks`
reports it in one place: to the log and to every :data:`CallbackObserver` (where, for example, a
metrics counter by provider and outcome hooks in).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class CallbackOutcome(StrEnum):
    # Verified and stored (the lifecycle's own classification, answered 200).
    APPLIED = "applied"  # moved the job
    DUPLICATE = "duplicate"  # the same terminal state again
    LATE = "late"  # anything after a terminal state (including after expiry)
    STALE = "stale"  # a non-terminal state the job has already passed
    LATE_RESULT = "late_result"  # a success after the job ended otherwise: noted on the job
    UNRECOGNISED = "unrecognised"  # an unknown status word, neither success nor failure: noted
    UNMATCHED = "unmatched"  # 202: an account-webhook document naming no known job yet: kept
    # Rejected: nothing about the job is changed; only the bodies marked "kept" are stored.
    UNKNOWN_PROVIDER = "unknown_provider"  # 404: no callbacks for this provider path
    BAD_TOKEN = "bad_token"  # 401: the URL token is not one reelhook signed for this provider
    TOO_LARGE = "too_large"  # 413: the body is over REELHOOK_MAX_CALLBACK_BYTES
    BAD_SIGNATURE = "bad_signature"  # 401: the provider's own signature does not verify
    BAD_BODY = "bad_body"  # 400: an account-webhook body that is not a job document: kept
    UNREADABLE = "unreadable"  # 400: a per-job callback reelhook cannot read: kept, noted on job
    UNKNOWN_JOB = "unknown_job"  # 404: the token names a job reelhook does not have
    JOB_MISMATCH = "job_mismatch"  # 401: the body names another provider job

    @property
    def accepted(self) -> bool:
        return self in _ACCEPTED


_ACCEPTED = frozenset(
    {
        CallbackOutcome.APPLIED,
        CallbackOutcome.DUPLICATE,
        CallbackOutcome.LATE,
        CallbackOutcome.STALE,
        CallbackOutcome.LATE_RESULT,
        CallbackOutcome.UNRECOGNISED,
        CallbackOutcome.UNMATCHED,
    }
)

CallbackObserver = Callable[[str, CallbackOutcome], None]
"""Called with (provider path segment, outcome) once per callback; must not raise or block."""
