"""The rest of the API from the command line, one command per operation, Stripe-CLI style:
``models``, ``subscriptions``, ``deliveries``, ``events``, ``keys`` list (or show one by id);
``cancel``, ``retry``, ``recover``, ``test``, ``rotate-secret``, ``pause``, ``resume``,
``create-key`` and ``revoke-key`` change things. Every command takes ``--json`` (the service's
own JSON) and otherwise prints a table or ``name: value`` lines for people."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from service.access import scopes
from service.cli.base import (
    CliError,
    Commands,
    client_options,
    print_fields,
    print_json,
    print_table,
)
from service.cli.remote import Remote, add_paging, show_one_or_page
from service.core.models import EVENT_TYPES

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "canceled")


def register(commands: Commands) -> None:
    options = client_options()

    def add(name: str, help: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        parser = commands.add_parser(name, parents=[options], help=help, description=help + ".")
        parser.set_defaults(handler=handler)
        return parser

    models = add("models", "list the models and their parameters, or show one", show_models)
    models.add_argument("model", nargs="?", help="e.g. trinetra/kling-v3")

    cancel = add("cancel", "cancel a job (sends job.canceled)", cancel_job)
    cancel.add_argument("job_id", metavar="JOB_ID", help="job_...")

    subs = add("subscriptions", "list subscriptions, or show one", show_subscriptions)
    subs.add_argument("subscription_id", nargs="?", metavar="ID", help="show this one")
    add_paging(subs, 50)

    test = add("test", "send a ping event to a subscription now", test_subscription)
    test.add_argument("subscription_id", metavar="ID", help="sub_...")

    rotate = add(
        "rotate-secret",
        "give a subscription a new signing secret (the old one keeps signing for the grace period)",
        rotate_secret,
    )
    rotate.add_argument("subscription_id", metavar="ID", help="sub_...")

    for name, status, handler in (
        ("pause", "disabled", pause),
        ("resume", "active", resume),
    ):
        parser = add(
            name,
            f"set a subscription {status}"
            + (" (its deliveries wait)" if status == "disabled" else " (held deliveries go out)"),
            handler,
        )
        parser.add_argument("subscription_id", metavar="ID", help="sub_...")

    recover = add(
        "recover", "resend a subscription's failed deliveries since a time", recover_deliveries
    )
    recover.add_argument("subscription_id", metavar="ID", help="sub_...")
    recover.add_argument(
        "--since", required=True, help="ISO 8601 time (UTC without a zone) or Unix seconds"
    )
    recover.add_argument("--until", help="and before this time")

    deliveries = add(
        "deliveries", "list deliveries, or show one with its attempts", show_deliveries
    )
    deliveries.add_argument("delivery_id", nargs="?", metavar="ID", help="show this one")
    deliveries.add_argument("--subscription", metavar="ID", help="only to this subscription")
    deliveries.add_argument("--status", choices=DELIVERY_STATUSES)
    deliveries.add_argument("--event", metavar="EVENT_ID", help="only of this event")
    deliveries.add_argument("--job", metavar="JOB_ID", help="only of this job's events")
    add_paging(deliveries, 20)

    retry = add("retry", "send deliveries again now", retry_deliveries)
    retry.add_argument("delivery_ids", nargs="+", metavar="ID", help="del_... (one or more)")

    events = add("events", "list events, newest last (see `tail` to follow them)", show_events)
    events.add_argument("-t", "--type", action="append", choices=EVENT_TYPES, help="repeatable")
    events.add_argument("--after", metavar="EVENT_ID", help="events after this one")
    events.add_argument("--limit", type=int, default=20, help="how many (default 20)")

    key_list = add("keys", "list API keys, or show one (admin)", show_keys)
    key_list.add_argument("key_id", nargs="?", metavar="ID", help="show this one")
    add_paging(key_list, 50)

    create_key = add("create-key", "create an API key, shown once (admin)", create_api_key)
    create_key.add_argument("name", help="who or what uses it")
    create_key.add_argument(
        "-s",
        "--scope",
        action="append",
        required=True,
        choices=list(scopes.SCOPES),
        help="a scope; repeatable",
    )

    revoke = add("revoke-key", "revoke an API key (admin)", revoke_api_key)
    revoke.add_argument("key_id", metavar="ID", help="key_...")


def _done(args: argparse.Namespace, value: Any, text: str) -> int:
    if args.json:
        print_json(value)
    else:
        print(text)
    return 0


def show_models(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key, required=False) as remote:
        models: list[dict[str, Any]] = remote.request("GET", "/v1/models")["data"]
    if args.model:
        found = [m for m in models if m["id"] == args.model]
        if not found:
            raise CliError(
                f"no model {args.model!r} (models: {', '.join(m['id'] for m in models)})"
            )
        model = found[0]
        if args.json:
            print_json(model)
            return 0
        print_fields(
            [
                ("id", model["id"]),
                ("provider", model["provider"]),
                ("available", model["available"]),
                ("simulated", model["simulated"]),
                ("description", model["description"]),
                ("pricing", model["pricing"]["description"]),
            ]
        )
        print()
        print_table(
            [
                {"name": name, **spec, "required": spec.get("required", False)}
                for name, spec in model["parameters"].items()
            ],
            [
                ("PARAMETER", "name"),
                ("TYPE", "type"),
                ("REQUIRED", "required"),
                ("DEFAULT", "default"),
                ("CHOICES", "enum"),
                ("MIN", "minimum"),
                ("MAX", "maximum"),
            ],
            "no parameters",
        )
        return 0
    if args.json:
        print_json({"data": models, "next_cursor": None})
        return 0
    print_table(
        [{**m, "parameters": list(m["parameters"])} for m in models],
        [
            ("MODEL", "id"),
            ("PROVIDER", "provider"),
            ("AVAILABLE", "available"),
            ("SIMULATED", "simulated"),
            ("PARAMETERS", "parameters"),
        ],
        "no models",
    )
    return 0


def cancel_job(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        job = remote.request("POST", f"/v1/jobs/{args.job_id}/cancel")
    return _done(args, job, f"{job['id']} {job['status']}")


_SUBSCRIPTION_COLUMNS = [
    ("ID", "id"),
    ("STATUS", "status"),
    ("URL", "url"),
    ("EVENTS", "event_types"),
    ("MODELS", "models"),
    ("DESCRIPTION", "description"),
]


def show_subscriptions(args: argparse.Namespace) -> int:
    return show_one_or_page(
        args,
        "/v1/subscriptions",
        args.subscription_id,
        print_one=_print_subscription,
        print_page=lambda rows: print_table(rows, _SUBSCRIPTION_COLUMNS, "no subscriptions"),
    )


def _print_subscription(sub: dict[str, Any]) -> None:
    print_fields(
        [
            ("id", sub["id"]),
            ("url", sub["url"]),
            ("status", sub["status"]),
            ("events", sub["event_types"] or "every job event"),
            ("models", sub["models"] or "all"),
            ("headers", list(sub["headers"])),
            ("description", sub["description"]),
            ("disabled because", sub["disabled_reason"]),
            ("failing since", sub["failing_since"]),
            ("old secret until", sub["previous_secret_expires_at"]),
            ("created", sub["created_at"]),
        ]
    )
    if "secret" in sub:
        print(f"secret (shown once; it verifies the signatures): {sub['secret']}")


def test_subscription(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        sent = remote.request("POST", f"/v1/subscriptions/{args.subscription_id}/test")
    return _done(args, sent, f"ping {sent['event_id']} queued for {args.subscription_id}")


def rotate_secret(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        sub = remote.request("POST", f"/v1/subscriptions/{args.subscription_id}/rotate-secret")
    if args.json:
        print_json(sub)
        return 0
    print(f"{sub['id']}: new secret (shown once): {sub['secret']}")
    print(f"the previous secret also signs until {sub['previous_secret_expires_at']}")
    return 0


def _set_status(args: argparse.Namespace, status: str) -> int:
    with Remote(args.url, args.api_key) as remote:
        sub = remote.request(
            "PATCH", f"/v1/subscriptions/{args.subscription_id}", json={"status": status}
        )
    return _done(args, sub, f"{sub['id']} {sub['status']}")


def pause(args: argparse.Namespace) -> int:
    return _set_status(args, "disabled")


def resume(args: argparse.Namespace) -> int:
    return _set_status(args, "active")


def recover_deliveries(args: argparse.Namespace) -> int:
    params = {"since": args.since}
    if args.until:
        params["until"] = args.until
    with Remote(args.url, args.api_key) as remote:
        done = remote.request(
            "POST", f"/v1/subscriptions/{args.subscription_id}/recover", params=params
        )
    return _done(
        args, done, f"{done['recovered']} failed deliveries of {args.subscription_id} resent"
    )


_DELIVERY_COLUMNS = [
    ("ID", "id"),
    ("STATUS", "status"),
    ("EVENT", "event_type"),
    ("SUBSCRIPTION", "subscription_id"),
    ("ATTEMPTS", "attempt_count"),
    ("LAST", "last_status_code"),
    ("NEXT ATTEMPT", "next_attempt_at"),
    ("CREATED", "created_at"),
]


def show_deliveries(args: argparse.Namespace) -> int:
    return show_one_or_page(
        args,
        "/v1/deliveries",
        args.delivery_id,
        print_one=_print_delivery,
        print_page=lambda rows: print_table(rows, _DELIVERY_COLUMNS, "no deliveries"),
        params={
            "subscription_id": args.subscription,
            "status": args.status,
            "event_id": args.event,
            "job_id": args.job,
        },
    )


def _print_delivery(delivery: dict[str, Any]) -> None:
    print_fields(
        [
            ("id", delivery["id"]),
            ("status", delivery["status"]),
            ("event", f"{delivery['event_id']} ({delivery['event_type']})"),
            ("job", delivery["job_id"]),
            ("subscription", delivery["subscription_id"]),
            ("attempts", delivery["attempt_count"]),
            ("next attempt", delivery["next_attempt_at"]),
            ("last error", delivery["last_error"]),
            ("created", delivery["created_at"]),
        ]
    )
    if delivery["attempts"]:
        print()
        print_table(
            [
                {**a, "answer": (a.get("response_body") or "")[:60].replace("\n", " ")}
                for a in delivery["attempts"]
            ],
            [
                ("ATTEMPTED", "attempted_at"),
                ("STATUS", "status_code"),
                ("MS", "latency_ms"),
                ("ERROR", "error"),
                ("ANSWER", "answer"),
            ],
            "",
        )


def retry_deliveries(args: argparse.Namespace) -> int:
    failed = 0
    resent = []
    with Remote(args.url, args.api_key) as remote:
        for delivery_id in args.delivery_ids:
            try:
                resent.append(remote.request("POST", f"/v1/deliveries/{delivery_id}/retry"))
            except CliError as exc:
                # One refusal (a deleted subscription, say) does not stop the others.
                print(f"reelhook: {delivery_id}: {exc}", file=sys.stderr)
                failed += 1
    if args.json:
        print_json({"data": resent})
    else:
        for delivery in resent:
            print(f"{delivery['id']} queued (attempt {delivery['attempt_count'] + 1})")
    return 1 if failed else 0


def show_events(args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.type:
        params["type"] = ",".join(args.type)
    if args.after:
        params["after"] = args.after
    with Remote(args.url, args.api_key) as remote:
        page = remote.request("GET", "/v1/events", params=params)
    if args.json:
        print_json(page)
        return 0
    print_table(
        [
            {
                **e,
                "about": (e.get("data") or {}).get("id")
                or (e.get("data") or {}).get("subscription_id"),
            }
            for e in page["data"]
        ],
        [("ID", "id"), ("TYPE", "type"), ("TIME", "timestamp"), ("ABOUT", "about")],
        "no events",
    )
    return 0


_KEY_COLUMNS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("SCOPES", "scopes"),
    ("CREATED", "created_at"),
    ("REVOKED", "revoked_at"),
]


def show_keys(args: argparse.Namespace) -> int:
    return show_one_or_page(
        args,
        "/v1/keys",
        args.key_id,
        print_one=lambda key: print_fields(
            [(heading.lower(), key[name]) for heading, name in _KEY_COLUMNS]
        ),
        print_page=lambda rows: print_table(rows, _KEY_COLUMNS, "no keys"),
    )


def create_api_key(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        key = remote.request("POST", "/v1/keys", json={"name": args.name, "scopes": args.scope})
    if args.json:
        print_json(key)
        return 0
    print(f"{key['id']} ({key['name']}): {', '.join(key['scopes'])}")
    print(f"key (shown once): {key['key']}")
    return 0


def revoke_api_key(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        remote.request("DELETE", f"/v1/keys/{args.key_id}")
    return _done(args, {"id": args.key_id, "revoked": True}, f"{args.key_id} revoked")
