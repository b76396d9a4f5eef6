"""``reelhook``: the command line. Each module here registers its sub-commands; to add one, write
``register(commands)`` in a module and list it in :data:`COMMANDS`.

argparse (the standard library) is enough: sub-commands with their own ``--help``, options with
environment defaults, and no dependency to keep up to date.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from service.cli import events, jobs, listen, providers, resources, serve
from service.cli.base import CliError, Commands
from service.ops import backup

COMMANDS: tuple[Callable[[Commands], None], ...] = (
    serve.register,
    jobs.register,
    events.register,
    providers.register,
    resources.register,
    listen.register,
    backup.register,
)

_EPILOG = """\
Commands other than serve talk to a running service: give its URL with --url or REELHOOK_URL
(default http://127.0.0.1:8000) and an API key with --api-key or REELHOOK_API_KEY.

  reelhook serve
  export REELHOOK_API_KEY=rh_...
  reelhook submit trinetra/kling-v3 "A drone shot over misty mountains" --wait
  reelhook tail --type job.succeeded

`reelhook COMMAND --help` explains each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelhook",
        description="Kling video jobs in, verified and signed webhook events out.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 1 failed, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args.handler(args)
    except CliError as exc:
        print(f"reelhook: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return status
