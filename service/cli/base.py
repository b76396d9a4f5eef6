"""What every ``reelhook`` command shares: the sub-command table type, the options of commands
that talk to a running service, and the one error type the entry point turns into a message."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TypeAlias

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``register(commands)`` functions add their sub-commands to."""

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """A problem the user can fix: printed as one line (no traceback), exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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
