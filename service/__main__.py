"""``reelhook`` / ``python -m service``: the command line."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from service import backup
from service.app import create_app
from service.logging_setup import configure_logging
from service.settings import SettingsError, load_settings


def serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"reelhook: cannot start: {line}", file=sys.stderr)
        return 2
    configure_logging(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=args.access_log,
    )
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reelhook",
        description="Kling video jobs in, verified and signed webhook events out.",
    )
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser(
        "serve", help="run the service (configured by REELHOOK_* environment variables)"
    )
    serve_parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    serve_parser.set_defaults(handler=serve)
    backup.register(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or sys.argv[1:])])
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
