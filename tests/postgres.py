"""A throwaway PostgreSQL 15 cluster for the tests, fsync off (the data dies with the session).

The starter itself is shared with the benchmark (``bench/pgcluster.py``); here a missing
PostgreSQL skips the PostgreSQL tests on a developer's machine and fails them under ``CI=true``.
Debian's ``postgresql-15`` package provides the binaries (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import asyncpg
import pytest

from bench.pgcluster import BINDIR, SUPERUSER, Cluster, Unavailable
from bench.pgcluster import throwaway_cluster as _throwaway_cluster
from service.storage.postgres import migrate_url
from tests.servers import free_port

__all__ = ["BINDIR", "SUPERUSER", "Cluster", "ReusedDatabase", "missing", "throwaway_cluster"]

# Every other backend on the database goes (a test's pools, a node it left behind), then every
# row but the schema's version and every identity's count. DELETE rather than TRUNCATE: a test
# leaves few rows, and TRUNCATE makes new files for every table and index (~50 ms here against
# ~5); ``setval(..., start_value, false)`` rather than ``ALTER SEQUENCE ... RESTART`` (the same
# next value) for the same reason: RESTART gives each sequence a new file (~5 ms in all).
# Foreign keys are not checked on the way (``replica``, for this transaction only), so the order
# of the tables does not matter.
#
# What the planner knows of a table outlives DELETE: its statistics (an ANALYZE, or autovacuum's,
# after a test wrote enough rows), the counts VACUUM left in pg_class, and the pages the rows
# took (the planner reads a file's size). A fresh database has none of these, and plans (which
# tests assert) follow them: a table that has any, or 10 pages or more in its file or an index's
# (below that the planner assumes 10 pages anyway), is truncated and its statistics deleted.
_EMPTY = """
SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid();
SET LOCAL session_replication_role = replica;
DO $$
DECLARE
  name text;
  learnt oid[];
  ten_pages int := 10 * current_setting('block_size')::int;
BEGIN
  SELECT array_agg(c.oid) INTO learnt FROM pg_class c
   WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
     AND c.relname <> 'schema_version'
     AND (c.reltuples >= 0 OR c.relpages > 0
          OR pg_relation_size(c.oid) >= ten_pages
          OR EXISTS (SELECT FROM pg_statistic s WHERE s.starelid = c.oid)
          OR EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid
                      AND pg_relation_size(i.indexrelid) >= ten_pages));
  IF learnt IS NOT NULL THEN
    EXECUTE 'TRUNCATE ' || (SELECT string_agg(oid::regclass::text, ', ') FROM unnest(learnt) AS oid)
      || ' CASCADE';
    DELETE FROM pg_statistic WHERE starelid = ANY (learnt);
  END IF;
  FOR name IN SELECT format('%I', tablename) FROM pg_tables
               WHERE schemaname = 'public' AND tablename <> 'schema_version' LOOP
    EXECUTE 'DELETE FROM ' || name;
  END LOOP;
END $$;
SELECT count(setval(format('%I', sequencename)::regclass, start_value, false))
  FROM pg_sequences WHERE schemaname = 'public';
"""

# What the schema looks like (its columns, indexes, constraints, triggers and version).
_FINGERPRINT = """
SELECT md5(coalesce(string_agg(item, '|' ORDER BY item), '')) FROM (
  SELECT concat_ws(':', table_name, column_name, data_type, column_default, is_nullable) AS item
    FROM information_schema.columns WHERE table_schema = 'public'
  UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL SELECT concat_ws(':', conrelid::regclass::text, conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT concat_ws(':', tgrelid::regclass::text, tgname)
    FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'version ' || version FROM schema_version
) AS schema
"""


def missing(reason: str) -> None:
    """Skip, or fail under CI: a missing PostgreSQL must never pass silently there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Start a fresh cluster (fsync off); stop it and delete its files on exit."""
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(_throwaway_cluster(durable=False, port=free_port()))
        except Unavailable as exc:
            missing(str(exc))
            raise  # (missing() has raised already)
        yield cluster


class ReusedDatabase:
    """One migrated database per test session, emptied before each test that uses it.

    Creating, migrating and dropping a database per test cost ~0.5-0.7 s on this machine, most of
    the PostgreSQL pass's time. Emptying the same one (every row deleted, identities
    restarted, every other connection to it ended) gives a test what a fresh migrated database
    would. A test that changed the schema itself (a migration test adding a version) leaves a
    different fingerprint, and the database is then made again from nothing.

    Tests that need a database without a schema ask for ``pg_database`` instead.
    """

    def __init__(self, cluster: Cluster, name: str) -> None:
        self._cluster = cluster
        self._name = name
        self._fingerprint: str | None = None
        # One connection kept open across tests, on a loop of its own (the fixture that empties
        # the database is synchronous): starting psql and a new backend for every test cost
        # ~30-50 ms of CPU each time on this machine, more than the emptying itself.
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None

    def emptied(self) -> str:
        """The URL of the database, migrated and holding no rows."""
        url = self._cluster.url(self._name)
        if self._fingerprint is not None:
            if self._loop.run_until_complete(self._empty()) == self._fingerprint:
                return url
            self._loop.run_until_complete(self._disconnect())
            self._cluster.drop_database(self._name)
        self._cluster.create_database(self._name)
        self._loop.run_until_complete(migrate_url(url))
        self._fingerprint = self._loop.run_until_complete(self._empty())
        return url

    def close(self) -> None:
        self._loop.run_until_complete(self._disconnect())
        self._loop.close()

    async def _empty(self) -> str:
        """Empty the database (every other connection to it ended); return its fingerprint."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._cluster.url(self._name))
            try:
                async with self._conn.transaction():
                    await self._conn.execute(_EMPTY)
                return str(await self._conn.fetchval(_FINGERPRINT))
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                # The kept connection was ended under it (a test ending backends): once more.
                await self._disconnect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not conn.is_closed():
                await conn.close()
