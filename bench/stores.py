"""The stores side by side: ingest, ack latency and fan-out on SQLite, on PostgreSQL with one node
and on PostgreSQL with three nodes, in one run (``python -m bench --stores``, part of ``make
bench``).

Every configuration is served the same way, behind Caddy on loopback (round robin over its
nodes), so the only difference is the store and the number of nodes. PostgreSQL is a throwaway
cluster started for the run (``bench/pgcluster.py``) with fsync and synchronous commit on, as
SQLite runs with ``synchronous=FULL``: both acknowledge only what is on disk. Each configuration
gets fresh data (its own SQLite file or database) and the same work, with a ledger per scenario
(sent, acknowledged, stored, delivered, duplicates, lost) and CPU µs per item of every process
involved, read from /proc: the reelhook nodes together, the PostgreSQL server (its postmaster and
backends), Caddy and the load generator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.backlog import seed_backlog
from bench.pgcluster import Cluster, throwaway_cluster
from bench.procs import (
    CpuTimes,
    Process,
    cpu_times,
    free_port,
    reaped_children_seconds,
    run_load,
    start_service,
)
from bench.seed import job_id, seed_jobs

SUBSCRIBERS = 10


@dataclass(frozen=True)
class StoreSizes:
    """How much work each configuration gets; ``quick`` for a run of a few minutes."""

    ingest: int = 20_000
    ack_rate: int = 500
    ack_seconds: int = 10
    fanout_events: int = 2_000  # x SUBSCRIBERS deliveries

    @classmethod
    def quick(cls) -> StoreSizes:
        return cls(ingest=2_000, ack_rate=300, ack_seconds=3, fanout_events=200)

    @property
    def jobs(self) -> int:
        return self.ingest + self.ack_rate * self.ack_seconds + self.fanout_events


@dataclass
class Column:
    """One configuration's figures and ledgers."""

    name: str
    figures: dict[str, float] = field(default_factory=dict)
    cpu_us: dict[str, dict[str, float]] = field(default_factory=dict)
    ledgers: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: str | None = None


class ServerCpu:
    """CPU seconds of a PostgreSQL server: its postmaster and every child process (backends,
    writers), read from /proc: the live children's, and the postmaster's count of the children
    it has reaped (``cutime`` + ``cstime``). Without the reaped ones a backend that exited
    between two readings took its CPU with it, and the 2026-12-06 05:29 report showed PostgreSQL
    at -494 µs per callback of ack latency."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    def cpu(self) -> CpuTimes:
        total = cpu_times(self.postmaster).total + reaped_children_seconds(self.postmaster)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it exited meanwhile
            if int(fields[1]) == self.postmaster:  # the parent pid
                total += cpu_times(int(stat.parent.name)).total
        return CpuTimes(total, total)


class Meter:
    """CPU seconds each named group of processes used within the block."""

    def __init__(self, groups: dict[str, list[Any]]) -> None:
        self.groups = groups

    def _read(self) -> dict[str, float]:
        return {name: sum(p.cpu().total for p in members) for name, members in self.groups.items()}

    def __enter__(self) -> Meter:
        self._before = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._read()
        self.used = {name: after[name] - self._before[name] for name in after}

    def per_item(self, items: int, load: dict[str, Any] | None = None) -> dict[str, float]:
        scale = 1e6 / max(1, items)
        out = {name: used * scale for name, used in self.used.items()}
        if load is not None:
            out["load"] = float(load["cpu_s"]) * scale
        return out


@dataclass
class Deployment:
    """The nodes of one configuration behind Caddy, and how to read what they stored."""

    name: str
    nodes: int
    work: Path
    env: dict[str, str]
    secret_key: str
    cluster: Cluster | None = None
    database: str = ""
    running: list[Process] = field(default_factory=list)

    def count(self, sql: str) -> int:
        """One ``SELECT count(*)`` on the store (the bench's own ids inline: no user input)."""
        if self.cluster is not None:
            return int(self.cluster.sql(sql, self.database) or 0)
        import sqlite3

        path = Path(self.env["REELHOOK_DATA_DIR"]) / "reelhook.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute(sql).fetchone()[0])

    def node_env(self, index: int, port: int, public_url: str) -> dict[str, str]:
        env = dict(self.env)
        env.update(REELHOOK_PORT=str(port), REELHOOK_PUBLIC_URL=public_url)
        if self.cluster is not None:
            # Blobs stay per node (docs/scaling.md); the store is shared.
            env["REELHOOK_DATA_DIR"] = str(self.work / f"node{index}")
        return env

    @contextmanager
    def serve(self, log: Path) -> Iterator[str]:
        """Start the nodes (together) and Caddy in front of them; yield Caddy's URL."""
        front = free_port()
        url = f"http://127.0.0.1:{front}"
        ports = [free_port() for _ in range(self.nodes)]
        with ExitStack() as stack:
            self.running = [
                stack.enter_context(start_service(self.node_env(n, port, url), log))
                for n, port in enumerate(ports)
            ]
            caddyfile = self.work / "Caddyfile"
            upstreams = " ".join(f"127.0.0.1:{port}" for port in ports)
            caddyfile.write_text(
                "{\n\tadmin off\n\tauto_https off\n}\n"
                f"http://127.0.0.1:{front} {{\n"
                f"\treverse_proxy {upstreams} {{\n\t\tlb_policy round_robin\n\t}}\n}}\n"
            )
            self.caddy = stack.enter_context(
                Process(
                    "caddy",
                    ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                    front,
                    dict(self.env),
                    log,
                )
            )
            try:
                yield url
            finally:
                self.running = []


def _ids(column: str, first: int, count: int) -> str:
    return f"{column} BETWEEN '{job_id(first)}' AND '{job_id(first + count - 1)}'"


class StoreBench:
    """Runs the same scenarios on each configuration; see the module docstring."""

    def __init__(
        self,
        work: Path,
        sizes: StoreSizes,
        base_env: dict[str, str],
        sink: Process,
        log: Path,
        admin_key: str,
    ) -> None:
        self.admin_key = admin_key
        self.work = work
        self.sizes = sizes
        self.base_env = base_env
        self.sink = sink
        self.log = log
        self.columns: list[Column] = []

    def run(self) -> list[Column]:
        with throwaway_cluster(durable=True) as cluster:
            for name, nodes, pg in (
                ("SQLite", 1, False),
                ("PostgreSQL x1", 1, True),
                ("PostgreSQL x3", 3, True),
            ):
                column = Column(name)
                self.columns.append(column)
                try:
                    self.configuration(column, nodes, cluster if pg else None)
                except Exception as exc:  # keep the other columns
                    column.failed = f"{type(exc).__name__}: {exc}"[:300]
        return self.columns

    def configuration(self, column: Column, nodes: int, cluster: Cluster | None) -> None:
        folder = self.work / f"store-{len(self.columns)}"
        env = {**self.base_env, "REELHOOK_DATA_DIR": str(folder / "data")}
        deployment = Deployment(
            column.name, nodes, folder, env, env["REELHOOK_SECRET_KEYS"].split(",")[0]
        )
        if cluster is not None:
            deployment.database = f"bench{len(self.columns)}"
            deployment.cluster = cluster
            env["REELHOOK_DATABASE_URL"] = cluster.create_database(deployment.database)
        sizes = self.sizes
        asyncio.run(seed_jobs(env, 0, sizes.jobs))
        servers: list[Any] = [ServerCpu(cluster.postmaster_pid())] if cluster else []
        with deployment.serve(self.log) as url:
            groups = {"reelhook": deployment.running, "caddy": [deployment.caddy]}
            if servers:
                groups["postgresql"] = servers
            self.ingest(column, deployment, url, groups, 0)
            self.ack_latency(column, deployment, url, groups, sizes.ingest)
            subs = [
                subscribe(url, self.admin_key, f"{self.sink.url}{self.prefix()}{n}")
                for n in range(SUBSCRIBERS)
            ]
        self.fanout(column, deployment, subs, servers, sizes.jobs - sizes.fanout_events)

    def prefix(self) -> str:
        """The sink path of this configuration's subscribers."""
        return f"/stores/{len(self.columns)}/"

    def ingest(
        self, column: Column, d: Deployment, url: str, groups: dict[str, list[Any]], first: int
    ) -> None:
        count = self.sizes.ingest
        with Meter(groups) as meter:
            got = self.callbacks(url, first, count, mode="closed", concurrency=50)
        column.figures["ingest (callbacks/s, closed loop c=50)"] = got["rate_per_s"]
        column.cpu_us["ingest"] = meter.per_item(count, got)
        column.ledgers["ingest"] = self.callback_ledger(d, got, first, count)

    def ack_latency(
        self, column: Column, d: Deployment, url: str, groups: dict[str, list[Any]], first: int
    ) -> None:
        rate, seconds = self.sizes.ack_rate, self.sizes.ack_seconds
        count = rate * seconds
        with Meter(groups) as meter:
            got = self.callbacks(url, first, count, mode="open", rate=rate, connections=200)
        column.figures[f"ack latency p50 at {rate}/s (ms)"] = got["latency_ms"]["p50"]
        column.figures[f"ack latency p99 at {rate}/s (ms)"] = got["latency_ms"]["p99"]
        column.cpu_us["ack latency"] = meter.per_item(count, got)
        column.ledgers["ack latency"] = self.callback_ledger(d, got, first, count)

    def fanout(
        self, column: Column, d: Deployment, subs: list[str], servers: list[Any], first: int
    ) -> None:
        """A backlog of job events to ten subscribers, put in while the nodes are down and held
        back (subscriptions disabled) until every node runs; then resumed and timed."""
        events = self.sizes.fanout_events
        expected = events * SUBSCRIBERS
        asyncio.run(seed_backlog(d.env, first, events, f"{self.sink.url}/files/clip.mp4"))
        marks = ", ".join(f"'{sub}'" for sub in subs)
        held = f"UPDATE subscriptions SET status = 'disabled' WHERE id IN ({marks})"
        if d.cluster is not None:
            d.cluster.sql(held, d.database)
        else:
            import sqlite3

            with sqlite3.connect(Path(d.env["REELHOOK_DATA_DIR"]) / "reelhook.db") as conn:
                conn.execute(held)
        httpx.post(f"{self.sink.url}/_reset").raise_for_status()
        with d.serve(self.log) as url:
            groups = {"reelhook": d.running, "caddy": [d.caddy]}
            if servers:
                groups["postgresql"] = servers
            with Meter(groups) as meter:
                for sub in subs:
                    resume(url, self.admin_key, sub)
                records = wait_for(self.sink, expected, self.prefix())
            delivered_sql = (
                "SELECT count(*) FROM deliveries WHERE status = 'succeeded' "
                f"AND subscription_id IN ({marks})"
            )
            deadline = time.monotonic() + 30
            while d.count(delivered_sql) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            delivered = d.count(delivered_sql)
        times = sorted(at for _, _, at in records)
        unique = len({(path, event) for path, event, _ in records})
        column.figures[f"fan-out to {SUBSCRIBERS} (deliveries/s)"] = (
            expected / (times[-1] - times[0]) if len(times) > 1 else 0.0
        )
        column.cpu_us["fan-out"] = meter.per_item(expected)
        column.ledgers["fan-out"] = {
            "expected": expected,
            "received": len(records),
            "delivered": delivered,
            "duplicates": len(records) - unique,
            "lost": expected - unique,
        }

    def callbacks(self, url: str, first: int, count: int, **spec: Any) -> dict[str, Any]:
        return run_load(
            {
                "target": "callbacks",
                "base_url": url,
                "secret_key": self.base_env["REELHOOK_SECRET_KEYS"].split(",")[0],
                "first": first,
                "count": count,
                "video_url": f"{self.sink.url}/files/clip.mp4",
                **spec,
            }
        )

    def callback_ledger(
        self, d: Deployment, got: dict[str, Any], first: int, count: int
    ) -> dict[str, int]:
        stored = d.count(
            f"SELECT count(*) FROM jobs WHERE {_ids('id', first, count)} AND status = 'succeeded'"
        )
        applied = d.count(
            f"SELECT count(*) FROM callbacks WHERE {_ids('job_id', first, count)}"
            " AND outcome = 'applied'"
        )
        return {
            "sent": int(got["sent"]),
            "acked": int(got["acked"]),
            "stored": stored,
            # A callback applied twice would be a second terminal event for one job.
            "duplicates": applied - stored,
            "lost": int(got["acked"]) - stored,
        }


def subscribe(url: str, admin_key: str, target: str) -> str:
    answer = httpx.post(
        f"{url}/v1/subscriptions",
        json={"url": target, "event_types": ["job.succeeded"]},
        headers={"X-API-Key": admin_key},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


def resume(url: str, admin_key: str, sub_id: str) -> None:
    httpx.patch(
        f"{url}/v1/subscriptions/{sub_id}",
        json={"status": "active"},
        headers={"X-API-Key": admin_key},
        timeout=30,
    ).raise_for_status()


def wait_for(sink: Process, expected: int, prefix: str, within: float = 240) -> list[Any]:
    """The sink's (path, event id, time) records under ``prefix`` once ``expected`` unique
    deliveries arrived, or the time ran out."""
    deadline = time.monotonic() + within
    while True:
        records = [
            (str(path), str(event), float(at))
            for path, event, _, at in httpx.get(f"{sink.url}/_records", timeout=30).json()
            if str(path).startswith(prefix)
        ]
        if len({(p, e) for p, e, _ in records}) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


# --- the report -------------------------------------------------------------------------------

SECTION = "## Stores side by side: SQLite | PostgreSQL x1 | PostgreSQL x3"


def _value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def markdown(columns: list[Column], sizes: StoreSizes, quick: bool) -> str:
    names = [c.name for c in columns]
    lines = [
        SECTION + (" (quick run)" if quick else ""),
        "",
        "The same work on each store in one run, every configuration behind Caddy (round robin),",
        "PostgreSQL 15 durable (fsync and synchronous commit on) on the same machine and disk.",
        f"Ingest {sizes.ingest:,} callbacks; ack latency {sizes.ack_rate}/s for "
        f"{sizes.ack_seconds} s; fan-out {sizes.fanout_events:,} events x {SUBSCRIBERS} "
        "subscribers, drained by every node at once.",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    figures = list(dict.fromkeys(name for c in columns for name in c.figures))
    for figure in figures:
        row = [_value(c.figures.get(figure)) for c in columns]
        lines.append(f"| {figure} | " + " | ".join(row) + " |")
    for scenario in dict.fromkeys(s for c in columns for s in c.cpu_us):
        row = []
        for c in columns:
            parts = c.cpu_us.get(scenario, {})
            row.append(" · ".join(f"{k} {_value(v)}" for k, v in parts.items()) or "—")
        lines.append(f"| CPU µs per item, {scenario} | " + " | ".join(row) + " |")
    for scenario in dict.fromkeys(s for c in columns for s in c.ledgers):
        row = []
        for c in columns:
            entries = c.ledgers.get(scenario)
            row.append(", ".join(f"{k} {v:,}" for k, v in entries.items()) if entries else "—")
        lines.append(f"| ledger, {scenario} | " + " | ".join(row) + " |")
    failed = [c for c in columns if c.failed]
    if failed:
        lines += ["", *(f"- **{c.name} incomplete**: {c.failed}" for c in failed)]
    return "\n".join(lines) + "\n"


def as_json(columns: list[Column]) -> list[dict[str, Any]]:
    return [asdict(c) for c in columns]


def merge_into(report: str, section: str) -> str:
    """``report`` with its stores section replaced by ``section`` (or ``section`` appended)."""
    if SECTION in report:
        head, rest = report.split(SECTION, 1)
        # The section runs to the next heading of its level, or the end.
        tail = rest.split("\n## ", 1)
        after = "\n## " + tail[1] if len(tail) > 1 else ""
        return head + section + after
    return report.rstrip("\n") + "\n\n" + section
