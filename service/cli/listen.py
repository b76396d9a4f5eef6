"""``reelhook listen`` and ``reelhook trigger``: the local development loop, as ``stripe listen``
and ``stripe trigger`` give it.

``listen --forward-to URL`` follows the event stream (``GET /v1/events/stream``) of any reelhook
the CLI can reach and POSTs each event to ``URL`` with Standard Webhooks headers, signed with a
secret it prints (or the one given with ``--secret``), so a handler on a laptop verifies exactly as
it will in production. The local URL is the user's own: no subscription is made, no private-address
allow-list applies and no tunnel is needed, because the CLI, not the service, makes the request.

``trigger TYPE`` asks the service to send a realistic sample event of ``TYPE`` to a subscription
now (``POST /v1/subscriptions/{id}/test`` with ``{"type": TYPE}``): signed and retried like a real
delivery, and visible to ``listen``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from service.cli.base import CliError, Commands, client_options, parse_headers, print_json
from service.cli.remote import Remote
from service.core.jsonutil import dumps_bytes
from service.core.models import EVENT_TYPES
from service.core.signing_keys import SECRET_PREFIX
from service.delivery import signing

_FORWARD_TIMEOUT = httpx.Timeout(10.0)


def register(commands: Commands) -> None:
    options = client_options()
    listen_parser = commands.add_parser(
        "listen",
        parents=[options],
        help="forward live events, signed, to a local URL",
        description="Follow the event stream and POST each event to --forward-to, signed per "
        "Standard Webhooks with the whsec_ secret printed at start (or --secret): the same body "
        "and headers a subscription receives. Nothing is created on the service and no "
        "allow-list applies; it works against a remote reelhook too. Stop with Ctrl-C.",
    )
    listen_parser.add_argument(
        "-f",
        "--forward-to",
        required=True,
        metavar="URL",
        help="where to POST events, e.g. http://localhost:3000/hook",
    )
    listen_parser.add_argument(
        "-e", "--event", action="append", choices=EVENT_TYPES, help="only this type; repeatable"
    )
    listen_parser.add_argument(
        "--secret",
        metavar="WHSEC",
        help="sign with this whsec_ secret (so your handler's setting survives a restart); "
        "default: a new one, printed",
    )
    listen_parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header on every forwarded request; repeatable",
    )
    listen_parser.add_argument(
        "-n", "--count", type=int, metavar="N", help="exit after forwarding N events"
    )
    listen_parser.set_defaults(handler=listen)

    trigger_parser = commands.add_parser(
        "trigger",
        parents=[options],
        help="send a sample event to subscriptions now",
        description="Send a realistic, signed sample event of TYPE now: to --subscription, or "
        "else to each of your active subscriptions that listens to TYPE. It is delivered, "
        "retried and logged like a real one, and `reelhook listen` sees it.",
    )
    trigger_parser.add_argument(
        "event_type", metavar="TYPE", choices=EVENT_TYPES, help="e.g. job.succeeded"
    )
    trigger_parser.add_argument(
        "-s", "--subscription", action="append", metavar="ID", help="send to this one; repeatable"
    )
    trigger_parser.set_defaults(handler=trigger)


def _forward_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--forward-to {url!r}: expected an http(s) URL", code=2)
    return url


def _secret(given: str | None) -> str:
    if given is None:
        return signing.new_secret()
    try:
        key = base64.b64decode(given.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise CliError(
            "--secret: expected a whsec_ secret (at least 16 bytes, base64 after the prefix)",
            code=2,
        )
    return given if given.startswith(SECRET_PREFIX) else SECRET_PREFIX + given


def listen(args: argparse.Namespace) -> int:
    target = _forward_url(args.forward_to)
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", code=2)
    secret = _secret(args.secret)
    extra = parse_headers(args.header)
    forwarded = 0
    with (
        Remote(args.url, args.api_key) as remote,
        httpx.Client(
            timeout=_FORWARD_TIMEOUT, trust_env=False, headers={"User-Agent": "reelhook-cli/listen"}
        ) as local,
    ):

        def ready() -> None:
            # On stderr (for people) also under --json: from here no event is missed.
            kinds = ", ".join(args.event) if args.event else "all"
            print(
                f"Ready! Forwarding {kinds} events from {remote.url} to {target}",
                file=sys.stderr,
                flush=True,
            )

        if args.json:
            print(json.dumps({"secret": secret, "forward_to": target}), flush=True)
        else:
            print(f"Your webhook signing secret is {secret} (Ctrl-C to stop)", flush=True)
        for message in remote.follow(
            types=args.event or [],
            on_connect=ready,
            on_drop=lambda reason: print(f"reelhook: {reason}; reconnecting", file=sys.stderr),
        ):
            event = json.loads(message.data)
            outcome = _forward(local, target, secret, extra, event)
            if args.json:
                print(json.dumps(outcome, ensure_ascii=False), flush=True)
            else:
                print(_line(outcome), flush=True)
            forwarded += 1
            if args.count is not None and forwarded >= args.count:
                break
    return 0


def _forward(
    local: httpx.Client, target: str, secret: str, extra: dict[str, str], event: dict[str, Any]
) -> dict[str, Any]:
    """POST one event as a subscription would receive it; report what the local URL answered."""
    event_id = event.pop("id")
    body = dumps_bytes(event)
    timestamp = int(time.time())
    headers = {
        **extra,
        "Content-Type": "application/json",
        **signing.headers([secret], event_id, timestamp, body),
    }
    started = time.monotonic()
    outcome: dict[str, Any] = {
        "event_id": event_id,
        "type": event.get("type"),
        "status_code": None,
        "error": None,
    }
    try:
        response = local.post(target, content=body, headers=headers)
        outcome["status_code"] = response.status_code
    except httpx.HTTPError as exc:
        # The local handler is not running yet, or crashed: say so and keep listening.
        outcome["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    outcome["latency_ms"] = round((time.monotonic() - started) * 1000)
    return outcome


def _line(outcome: dict[str, Any]) -> str:
    now = datetime.now(UTC).strftime("%H:%M:%S")
    answer = (
        f"[{outcome['status_code']}]"
        if outcome["status_code"] is not None
        else f"[failed: {outcome['error']}]"
    )
    sent = f"{outcome['type']:<21} {outcome['event_id']}"
    return f"{now}  --> {sent}  <-- {answer} {outcome['latency_ms']} ms"


def _listens(sub: dict[str, Any], event_type: str) -> bool:
    """Whether an active subscription receives ``event_type`` (the service's matching rule:
    an empty filter means every job event and subscription.disabled, never a ping)."""
    if sub["status"] != "active":
        return False
    if sub["event_types"]:
        return event_type in sub["event_types"]
    return event_type.startswith("job.") or event_type == "subscription.disabled"


def trigger(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        targets = args.subscription
        if not targets:
            subs: list[dict[str, Any]] = []
            cursor = None
            while True:
                params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
                page = remote.request("GET", "/v1/subscriptions", params=params)
                subs += page["data"]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            targets = [sub["id"] for sub in subs if _listens(sub, args.event_type)]
            if not targets:
                raise CliError(
                    f"no active subscription listens to {args.event_type}; pass --subscription "
                    "ID, or subscribe one (`reelhook subscribe URL`)"
                )
        sent = [
            {
                "subscription_id": sub_id,
                **remote.request(
                    "POST", f"/v1/subscriptions/{sub_id}/test", json={"type": args.event_type}
                ),
            }
            for sub_id in targets
        ]
    if args.json:
        print_json({"data": sent})
    else:
        for item in sent:
            print(f"{item['type']} {item['event_id']} queued for {item['subscription_id']}")
    return 0
