"""``reelhook`` / ``python -m service``: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from service.app import create_app
from service.server import Server
from service.settings import SettingsError, load_settings


def serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"reelhook: cannot start: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("REELHOOK_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=args.access_log,
    )
    Server(config, on_shutdown=app.state.end_streams).run()
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
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or sys.argv[1:])])
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
