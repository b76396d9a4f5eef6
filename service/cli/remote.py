"""Talking to a running reelhook: requests with the API key, errors as one readable line, and
following the live event stream across dropped connections without missing or repeating events.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from service.cli.base import CliError, print_json
from service.core import sse

# A stream sends a keep-alive comment every 15 s by default: a minute of silence is a dead link.
_STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
_MAX_RECONNECT_DELAY = 10.0


class Remote:
    def __init__(self, url: str, api_key: str | None, *, required: bool = True) -> None:
        """``required``: the commands use endpoints that need a key (all but ``models``)."""
        if not api_key and required:
            raise CliError("no API key: pass --api-key or set REELHOOK_API_KEY", code=2)
        self.url = url.rstrip("/")
        headers = {"User-Agent": "reelhook-cli"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=30.0,
            # The CLI talks to one known service; a proxy from the environment is not wanted.
            trust_env=False,
        )

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **options: Any) -> Any:
        """The JSON answer (None for 204); :class:`CliError` for an error answer or no answer."""
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        _raise_for_error(response)
        return response.json() if response.content else None

    def follow(
        self,
        *,
        types: list[str],
        last_event_id: str | None = None,
        after: str | None = None,
        on_connect: Callable[[], None] = lambda: None,
        on_drop: Callable[[str], None] = lambda reason: None,
    ) -> Iterator[sse.Message]:
        """Messages from ``GET /v1/events/stream``, forever. A dropped connection is reopened
        with ``Last-Event-ID``, so every event arrives exactly once. ``on_connect`` runs each time
        the stream has told its position; ``on_drop`` when a connection is lost."""
        params: dict[str, str] = {"type": ",".join(types)} if types else {}
        delay = 0.5
        while True:
            headers = {}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            elif after is not None:
                params["after"] = after
            try:
                with self._http.stream(
                    "GET",
                    "/v1/events/stream",
                    params=params,
                    headers=headers,
                    timeout=_STREAM_TIMEOUT,
                ) as response:
                    if response.is_error:
                        response.read()
                        _raise_for_error(response)
                    reader = sse.Reader()
                    connected = False
                    for line in response.iter_lines():
                        message = reader.feed(line)
                        if reader.last_event_id is not None:
                            last_event_id = reader.last_event_id
                            if not connected:
                                # The stream opens with its position: from here nothing is missed.
                                connected = True
                                delay = 0.5
                                on_connect()
                        if message is not None:
                            yield message
                reason = "the service closed the stream"
            except httpx.TransportError as exc:
                if last_event_id is None:
                    raise self._unreachable(exc) from None
                reason = f"connection lost ({type(exc).__name__})"
            on_drop(reason)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RECONNECT_DELAY)

    def _unreachable(self, exc: Exception) -> CliError:
        return CliError(
            f"cannot reach reelhook at {self.url} ({type(exc).__name__}); "
            "is `reelhook serve` running there? (set --url or REELHOOK_URL)"
        )


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        error = response.json()["error"]
        text = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
    raise CliError(f"the service answered {response.status_code}: {text}")


def add_paging(parser: argparse.ArgumentParser, default_limit: int) -> None:
    """``--limit`` and ``--cursor`` for a command listing one page of an id-ordered collection."""
    parser.add_argument(
        "--limit", type=int, default=default_limit, help=f"how many (default {default_limit})"
    )
    parser.add_argument(
        "--cursor", metavar="CURSOR", help="the page after this one (printed under a full page)"
    )


def show_one_or_page(
    args: argparse.Namespace,
    collection: str,
    one: str | None,
    *,
    print_one: Callable[[dict[str, Any]], None],
    print_page: Callable[[list[dict[str, Any]]], None],
    params: dict[str, str | None] | None = None,
) -> int:
    """What ``reelhook <resource> [ID]`` does: fetch the resource named ``one`` from
    ``collection``, or without it one page of the collection from ``--limit`` and ``--cursor``
    (:func:`add_paging`) and ``params`` (those whose value is empty are left out), and print it as
    JSON (``--json``) or for people. For people, when more follows, how to ask for it goes to
    stderr, so a pipe reading stdout sees only rows. Returns the exit status."""
    with Remote(args.url, args.api_key) as remote:
        if one:
            found = remote.request("GET", f"{collection}/{one}")
        else:
            paging = {"limit": str(args.limit), "cursor": args.cursor}
            query = {name: value for name, value in {**paging, **(params or {})}.items() if value}
            found = remote.request("GET", collection, params=query)
    if args.json:
        print_json(found)
    elif one:
        print_one(found)
    else:
        print_page(found["data"])
        if found.get("next_cursor"):
            print(f"more: add --cursor {found['next_cursor']}", file=sys.stderr)
    return 0
