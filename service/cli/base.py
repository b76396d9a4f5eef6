"""What every ``reelhook`` command shares: the sub-command table type, the options of commands
that talk to a running service, and the one error type the entry point turns into a message."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from service.app.settings import Settings

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``register(commands)`` functions add their sub-commands to."""

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """A problem the user can fix: printed as one line (no traceback), exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def environment_settings(doing: str) -> Settings | None:
    """The ``REELHOOK_*`` settings of a command that runs reelhook itself; None once each problem
    is printed as ``reelhook: cannot <doing>: ...`` (the command then exits 2)."""
    # Imported here so client commands start without loading the server's settings.
    from service.app.settings import SettingsError, load_settings

    try:
        return load_settings(os.environ)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"reelhook: cannot {doing}: {line}", file=sys.stderr)
        return None


def client_options() -> argparse.ArgumentParser:
    """``--url``, ``--api-key`` and ``--json``, for every command that talks to a service."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("REELHOOK_URL", DEFAULT_URL),
        help=f"the service's base URL (default: $REELHOOK_URL or {DEFAULT_URL})",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("REELHOOK_API_KEY"),
        help="an API key (default: $REELHOOK_API_KEY)",
    )
    group.add_argument(
        "--json", action="store_true", help="print the service's JSON instead of text"
    )
    return options


def parse_headers(items: list[str]) -> dict[str, str]:
    """``--header 'NAME: VALUE'`` options as a dict; a malformed one is a usage error."""
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise CliError(f"--header {item!r}: expected 'NAME: VALUE'", code=2)
        headers[name.strip()] = value.strip()
    return headers


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def video_url(job: dict[str, Any]) -> str | None:
    """The finished video's stable link: reelhook's mirror when there is one, else the URL."""
    for output in job.get("outputs") or []:
        url = output.get("mirror_url") or output.get("url")
        if url:
            return str(url)
    return None


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], empty: str) -> None:
    """Rows as an aligned table for people: ``columns`` are (heading, key) pairs; a missing or
    null value shows as ``-``. ``empty`` goes to stderr when there are no rows, so a pipe reading
    stdout sees nothing rather than a sentence."""
    if not rows:
        print(empty, file=sys.stderr)
        return
    cells = [[cell(row.get(key)) for _, key in columns] for row in rows]
    headings = [heading for heading, _ in columns]
    widths = [max(len(text) for text in column) for column in zip(headings, *cells, strict=False)]
    for line in [headings, *cells]:
        print(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        )


def print_fields(fields: list[tuple[str, Any]]) -> None:
    """One ``name: value`` line per field, the values aligned."""
    width = max(len(name) for name, _ in fields) + 2
    for name, value in fields:
        print(f"{name + ':':<{width}}{cell(value)}")


def cell(value: Any) -> str:
    """A value as table text: ``-`` for none, lists comma-separated, numbers without ``.0``."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
