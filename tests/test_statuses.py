"""Statuses are enums in Python and literals in SQL (SQLite matches partial indexes on literals
only): every status the SQL spells must be a value of one of the enums."""

from __future__ import annotations

import re
from pathlib import Path

import service.storage
from service.core.models import DeliveryStatus, JobStatus, MirrorStatus, SubscriptionStatus

STORAGE = Path(service.storage.__file__).parent
KNOWN = {
    str(s) for enum in (DeliveryStatus, JobStatus, MirrorStatus, SubscriptionStatus) for s in enum
}
# status = 'x', status <> 'x', status IN ('x', 'y'), DEFAULT 'x' on a status column.
_COMPARED = re.compile(r"status\s*(?:=|<>|!=)\s*'(\w+)'", re.IGNORECASE)
_LISTED = re.compile(r"status\s+IN\s*\(([^)]*)\)", re.IGNORECASE)
_DEFAULT = re.compile(r"\bstatus\s+TEXT\b[^,\n]*DEFAULT\s+'(\w+)'", re.IGNORECASE)


def spelt_statuses() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    # Migrations are per dialect (migrations/sqlite/, migrations/postgresql/).
    for path in [*STORAGE.glob("*.py"), *STORAGE.glob("migrations/*/*.sql")]:
        text = path.read_text()
        values = set(_COMPARED.findall(text)) | set(_DEFAULT.findall(text))
        for listed in _LISTED.findall(text):
            values |= set(re.findall(r"'(\w+)'", listed))
        if values:
            name = path.name if path.suffix == ".py" else f"{path.parent.name}/{path.name}"
            found[name] = values
    return found


def test_every_status_in_the_sql_is_an_enum_value() -> None:
    found = spelt_statuses()
    # The scan sees them.
    assert "deliveries.py" in found
    assert {"sqlite/0001_initial.sql", "postgresql/0001_initial.sql"} <= set(found)
    unknown = {name: values - KNOWN for name, values in found.items() if values - KNOWN}
    assert unknown == {}
