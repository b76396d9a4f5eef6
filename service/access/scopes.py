"""API key scopes: what each one allows, and which scopes a broader one implies.

An endpoint names the one scope it needs (``authenticate(request, Scope.JOBS_READ)``); a key
holds it when the key has that scope, a scope implying it, or ``admin``. Write scopes imply their
read scope, as a Stripe restricted key's "write" includes "read".
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Scope(StrEnum):
    ADMIN = "admin"
    JOBS_WRITE = "jobs:write"
    JOBS_READ = "jobs:read"
    SUBSCRIPTIONS_WRITE = "subscriptions:write"
    SUBSCRIPTIONS_READ = "subscriptions:read"
    READ = "read"


ADMIN = Scope.ADMIN

SCOPES: dict[str, str] = {
    Scope.ADMIN: "everything, every key's jobs and subscriptions, and managing API keys",
    Scope.JOBS_WRITE: "submit jobs (includes jobs:read)",
    Scope.JOBS_READ: "read the key's own jobs and their events",
    Scope.SUBSCRIPTIONS_WRITE: "create, change, test and delete subscriptions (includes "
    "subscriptions:read)",
    Scope.SUBSCRIPTIONS_READ: "read the key's own subscriptions and their deliveries",
    Scope.READ: "read-only: jobs:read and subscriptions:read",
}

_IMPLIES: dict[str, frozenset[str]] = {
    Scope.JOBS_WRITE: frozenset({Scope.JOBS_READ}),
    Scope.SUBSCRIPTIONS_WRITE: frozenset({Scope.SUBSCRIPTIONS_READ}),
    Scope.READ: frozenset({Scope.JOBS_READ, Scope.SUBSCRIPTIONS_READ}),
}


def grants(held: Iterable[str], wanted: str) -> bool:
    """Whether a key holding the scopes ``held`` may do what needs ``wanted``."""
    return any(scope in (ADMIN, wanted) or wanted in _IMPLIES.get(scope, ()) for scope in held)


def unknown(requested: Iterable[str]) -> list[str]:
    """The requested scope names reelhook does not know, in the order given."""
    return [scope for scope in requested if scope not in SCOPES]
