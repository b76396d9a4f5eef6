"""``reelhook subscribe``, ``reelhook unsubscribe`` and ``reelhook tail``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli.base import (
    CliError,
    Commands,
    client_options,
    parse_headers,
    print_json,
    video_url,
)
from service.cli.remote import Remote
from service.core.models import EVENT_TYPES


def register(commands: Commands) -> None:
    options = client_options()
    subscribe_parser = commands.add_parser(
        "subscribe",
        parents=[options],
        help="send signed events to a URL",
        description="Subscribe a URL: every matching event is POSTed to it, signed per Standard "
        "Webhooks with the whsec_ secret printed here (once). Without --event it receives "
        "every job event.",
    )
    subscribe_parser.add_argument("target", metavar="URL", help="where events are POSTed")
    subscribe_parser.add_argument(
        "-e", "--event", action="append", choices=EVENT_TYPES, help="an event type; repeatable"
    )
    subscribe_parser.add_argument(
        "-m", "--model", action="append", help="only jobs of this model; repeatable"
    )
    subscribe_parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a static header sent with every delivery (n8n Header Auth); repeatable",
    )
    subscribe_parser.add_argument("--description", help="a note for yourself")
    subscribe_parser.add_argument(
        "--filter",
        metavar="JSON",
        help='a payload filter, e.g. \'{"path": "data.metadata.channel", "eq": "bots"}\' '
        "(docs/filters-and-templates.md)",
    )
    subscribe_parser.add_argument(
        "--template",
        metavar="FILE",
        type=argparse.FileType("r", encoding="utf-8"),
        help="a body template (Jinja2), e.g. examples/templates/slack.json.j2",
    )
    subscribe_parser.add_argument(
        "--content-type", help="what the template produces (default application/json)"
    )
    subscribe_parser.add_argument(
        "--v1a",
        action="store_true",
        help="sign with Ed25519 (v1a): verify with the whpk_ public key printed here",
    )
    subscribe_parser.add_argument(
        "--fifo",
        action="store_true",
        help="deliver in event order, one at a time (docs/ordered-delivery.md)",
    )
    subscribe_parser.set_defaults(handler=subscribe)

    unsubscribe_parser = commands.add_parser(
        "unsubscribe",
        parents=[options],
        help="delete a subscription",
        description="Delete a subscription; its pending deliveries are canceled.",
    )
    unsubscribe_parser.add_argument("subscription_id", metavar="ID", help="sub_...")
    unsubscribe_parser.set_defaults(handler=unsubscribe)

    tail_parser = commands.add_parser(
        "tail",
        parents=[options],
        help="follow the event log live",
        description="Print events as they happen, from GET /v1/events/stream. A dropped "
        "connection is resumed where it stopped (Last-Event-ID): nothing is missed or repeated. "
        "Stop with Ctrl-C.",
    )
    tail_parser.add_argument(
        "-t", "--type", action="append", choices=EVENT_TYPES, help="only this type; repeatable"
    )
    start = tail_parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-start", action="store_true", help="replay the whole log first, then follow"
    )
    start.add_argument("--after", metavar="EVENT_ID", help="start after this event (evt_...)")
    start.add_argument(
        "--last-event-id", metavar="N", help="resume after this stream position (printed by --json)"
    )
    tail_parser.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    tail_parser.set_defaults(handler=tail)


def subscribe(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.target}
    if args.event:
        body["event_types"] = args.event
    if args.model:
        body["models"] = args.model
    if args.header:
        body["headers"] = parse_headers(args.header)
    if args.description is not None:
        body["description"] = args.description
    if args.filter is not None:
        try:
            body["filter"] = json.loads(args.filter)
        except ValueError as exc:
            raise CliError(f"--filter: not JSON ({exc})", code=2) from None
    if args.template is not None:
        with args.template:
            body["template"] = args.template.read()
    if args.content_type is not None:
        body["content_type"] = args.content_type
    if args.v1a:
        body["signature_scheme"] = "v1a"
    if args.fifo:
        body["ordering"] = "fifo"
    with Remote(args.url, args.api_key) as remote:
        sub = remote.request("POST", "/v1/subscriptions", json=body)
    if args.json:
        print_json(sub)
        return 0
    print(f"{sub['id']} → {sub['url']}")
    print(f"events: {', '.join(sub['event_types']) or 'every job event'}")
    if sub.get("public_key"):
        print(f"public key (v1a, Ed25519; it verifies the signatures): {sub['public_key']}")
    else:
        print(f"secret (shown once; it verifies the signatures): {sub['secret']}")
    return 0


def unsubscribe(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        remote.request("DELETE", f"/v1/subscriptions/{args.subscription_id}")
    if not args.json:
        print(f"{args.subscription_id} deleted")
    return 0


def tail(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", code=2)
    last_event_id = "0" if args.from_start else args.last_event_id
    seen = 0
    with Remote(args.url, args.api_key) as remote:
        for message in remote.follow(
            types=args.type or [],
            last_event_id=last_event_id,
            after=args.after,
            on_drop=lambda reason: print(f"reelhook: {reason}; reconnecting", file=sys.stderr),
        ):
            event = json.loads(message.data)
            if args.json:
                print(json.dumps({"seq": message.id, **event}, ensure_ascii=False), flush=True)
            else:
                print(_line(event), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


def _line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    parts = [event["timestamp"], f"{event['type']:<21}"]
    if data.get("object") == "job":
        parts += [data["id"], data["model"]]
        if data.get("error"):
            parts.append(f"{data['error']['kind']}: {data['error']['message']}")
        video = video_url(data)
        if video:
            parts.append(video)
    elif "subscription_id" in data:
        parts.append(data["subscription_id"])
    elif data.get("object") == "subscription":
        parts += [data["id"], data["url"]]
    return "  ".join(parts)
