"""``reelhook providers``: each provider's setup, and the account webhook URL to paste into the
provider's dashboard."""

from __future__ import annotations

import argparse

from service.cli.base import Commands, client_options, print_json
from service.cli.remote import Remote


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "providers",
        parents=[client_options()],
        help="show each provider's setup and account webhook URL (admin key)",
        description="List the providers: configured or simulated, how results come back, and "
        "the account webhook URL to set on the provider's API key (Trinetra: 'set a "
        "webhook_url on your API key'). The URL is a secret; it needs an admin key.",
    )
    parser.set_defaults(handler=show)


def show(args: argparse.Namespace) -> int:
    with Remote(args.url, args.api_key) as remote:
        page = remote.request("GET", "/v1/providers")
    if args.json:
        print_json(page)
        return 0
    for provider in page["data"]:
        state = "simulated" if provider["simulated"] else "configured"
        if not provider["configured"]:
            state = "not configured"
        print(f"{provider['name']:<10} {state:<15} results: {provider['callbacks']}")
        if provider["account_webhook_url"]:
            print(f"  account webhook URL: {provider['account_webhook_url']}")
    return 0
