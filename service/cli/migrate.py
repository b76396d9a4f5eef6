"""``reelhook migrate``: bring the configured store's schema up to this version, then exit; and
``reelhook copy --to postgresql://…``: move a SQLite deployment into PostgreSQL, once.

``reelhook serve`` migrates on start as well; running this first lets a rolling upgrade apply a
migration once, before any new node starts (docs/scaling.md). On PostgreSQL the migration runs
under an advisory lock, so running it while nodes start is safe too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from service.cli.base import Commands, environment_settings


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
    from service.storage.database import DATABASE_ERRORS, StoreError, migrate_store

    settings = environment_settings("migrate")
    if settings is None:
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


def register_copy(commands: Commands) -> None:
    parser = commands.add_parser(
        "copy",
        help="copy this SQLite deployment into a PostgreSQL database, once",
        description="Copy every job, event, subscription, delivery, attempt, callback, key and "
        "blob record of the SQLite database in REELHOOK_DATA_DIR into the PostgreSQL database "
        "given with --to (migrated first; it must hold no reelhook data), in one transaction, "
        "verified by counting each table. Stop reelhook first; blob files stay in the data "
        "directory.",
    )
    parser.add_argument("--to", required=True, metavar="URL", help="postgresql://…")
    parser.set_defaults(handler=copy)


def copy(args: argparse.Namespace) -> int:
    from service.app.settings import SettingsError, load_settings
    from service.storage.database import DATABASE_ERRORS, StoreError, parse_url
    from service.storage.datadir import DataDirInUse, locked

    try:
        settings = load_settings(os.environ)
        dialect, _ = parse_url(args.to)
    except (SettingsError, StoreError) as exc:
        print(f"reelhook: cannot copy: {exc}", file=sys.stderr)
        return 2
    if dialect != "postgresql":
        print("reelhook: cannot copy: --to must be a postgresql:// URL", file=sys.stderr)
        return 2
    try:
        with locked(settings.data_dir):
            copied = asyncio.run(_copy(settings.database_path, args.to))
    except (DataDirInUse, StoreError) as exc:
        print(f"reelhook: cannot copy: {exc}", file=sys.stderr)
        return 1
    except DATABASE_ERRORS as exc:
        print(f"reelhook: cannot copy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for table, count in copied.items():
        print(f"{table}: {count}")
    return 0


async def _copy(source: Path, target: str) -> dict[str, int]:
    from service.storage.database import Database
    from service.storage.transfer import copy_store

    async with Database.open(source) as sqlite, Database.open(target) as postgresql:
        return await copy_store(sqlite, postgresql)
