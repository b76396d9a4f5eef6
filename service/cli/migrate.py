"""``reelhook migrate``: bring the configured store's schema up to this version, then exit.

``reelhook serve`` migrates on start as well; running this first lets a rolling upgrade apply a
migration once, before any new node starts (docs/scaling.md). On PostgreSQL the migration runs
under an advisory lock, so running it while nodes start is safe too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from service.cli.base import Commands


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "migrate",
        help="apply the store's pending schema migrations and exit",
        description="Apply every pending migration to the store REELHOOK_DATABASE_URL names "
        "(default: the SQLite file in REELHOOK_DATA_DIR) and print the schema version. Refuses "
        "a database whose schema is newer than this reelhook.",
    )
    parser.set_defaults(handler=migrate)


def migrate(args: argparse.Namespace) -> int:
    from service.app.settings import SettingsError, load_settings
    from service.storage.database import DATABASE_ERRORS, StoreError, migrate_store

    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"reelhook: cannot migrate: {line}", file=sys.stderr)
        return 2
    try:
        dialect, version = asyncio.run(migrate_store(settings.database_url))
    except StoreError as exc:
        print(f"reelhook: cannot migrate: {exc}", file=sys.stderr)
        return 1
    except DATABASE_ERRORS as exc:
        print(f"reelhook: cannot migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{dialect} schema at version {version}")
    return 0
