"""API key scopes: what each one allows, and which scopes a broader one implies.

An endpoint names the one scope it needs (``authenticate(request, "jobs:read")``); a key holds
it when the key has that scope, a scope implying it, or ``admin``. Write scopes imply their read
scope, as a Stripe restricted key's "write" includes "read".
"""

from __future__ import annotations

from collections.abc import Iterable

ADMIN = "admin"

SCOPES: dict[str, str] = {
    ADMIN: "everything, every key's jobs and subscriptions, and managing API keys",
    "jobs:write": "submit jobs (includes jobs:read)",
    "jobs:read": "read the key's own jobs and their events",
    "subscriptions:write": "create, change, test and delete subscriptions (includes "
    "subscriptions:read)",
    "subscriptions:read": "read the key's own subscriptions and their deliveries",
    "read": "read-only: jobs:read and subscriptions:read",
}

_IMPLIES: dict[str, frozenset[str]] = {
    "jobs:write": frozenset({"jobs:read"}),
    "subscriptions:write": frozenset({"subscriptions:read"}),
    "read": frozenset({"jobs:read", "subscriptions:read"}),
}


def grants(held: Iterable[str], wanted: str) -> bool:
    """Whether a key holding the scopes ``held`` may do what needs ``wanted``."""
    return any(scope in (ADMIN, wanted) or wanted in _IMPLIES.get(scope, ()) for scope in held)


def unknown(requested: Iterable[str]) -> list[str]:
    """The requested scope names reelhook does not know, in the order given."""
    return [scope for scope in requested if scope not in SCOPES]
