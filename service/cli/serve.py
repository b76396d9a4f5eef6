"""``reelhook serve``: run the service, configured by ``REELHOOK_*`` environment variables."""

from __future__ import annotations

import argparse
import sys

from service.cli.base import Commands, environment_settings


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the service",
        description="Run reelhook: the API, the provider callbacks, the delivery dispatcher and, "
        "for providers without an API key, the built-in simulator. Every setting comes from "
        "REELHOOK_* environment variables (see README, Settings); a bad value stops start-up "
        "with one line naming it.",
    )
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    # Imported here so client commands start without loading the server.
    import uvicorn

    from service.app.factory import create_app
    from service.app.logs import configure_logging
    from service.app.server import Server, guarded_http
    from service.storage import datadir

    settings = environment_settings("start")
    if settings is None:
        return 2
    try:
        # Checked before uvicorn starts, which would report it as a traceback; the lifespan
        # takes the lock for good (a start racing this one still fails there, safely).
        with datadir.locked(settings.data_dir):
            pass
    except datadir.DataDirInUse:
        print(
            f"reelhook: cannot start: the data directory {settings.data_dir.resolve()} is in use "
            "by another reelhook (stop it, or set REELHOOK_DATA_DIR to another directory)",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        loop="uvloop",
        http=guarded_http(settings.header_timeout, settings.body_timeout),
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=args.access_log,
    )
    Server(
        config,
        on_shutdown=app.state.end_streams,
        on_drain=app.state.begin_drain,
        drain=settings.drain,
    ).run()
    return 0
