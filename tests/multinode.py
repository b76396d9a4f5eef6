"""A reelhook cluster on loopback for the multi-node scenarios (tests/test_multinode.py, and
``python -m bench.multinode``): three ``reelhook serve`` processes on one PostgreSQL database
behind a real Caddy (its configuration derived from deploy/Caddyfile.cluster, with its /readyz
health checks), the provider simulator as its own process calling back *through* Caddy, blobs on
S3 (moto in server mode) and subscriber sinks counting every delivery by (subscriber, event id).

:func:`fleet` starts everything on free loopback ports and stops every process it started on the
way out, whatever happened (a SIGSTOPped node is continued first, so it can be stopped).

Each scenario ends with a :class:`Ledger` (sent, acknowledged, delivered, duplicates, lost),
printed and appended as one JSON line to ``multinode-ledgers.jsonl`` in the pytest base
temporary directory, so the figures can be quoted.

Run as ``python -m tests.multinode simulator PORT SCENARIO_JSON``, it is the simulator process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
from starlette.types import Receive, Scope, Send

from tests.helpers.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, bucket_name, s3_client
from tests.servers import free_port, read_body, run_lifespan, run_server
from tests.support import ADMIN_KEY

REPO = Path(__file__).resolve().parent.parent
CADDYFILE = REPO / "deploy" / "Caddyfile.cluster"
SECRET_KEY = "multinode-secret-key-0123456789abcdef"
PROVIDER_KEYS = {
    "trinetra": "mn-trinetra-key-0123456789",
    "apiframe": "mn-apiframe-key-0123456789",
    "segmind": "mn-segmind-key-0123456789",
}
# Seconds without a heartbeat before a node counts as dead (heartbeats every quarter of it):
# short, so takeovers happen within the scenario, long enough that a node on a busy 2-core
# machine is not declared dead while it lives.
NODE_TIMEOUT = 2.0
LEDGER_FILE = "multinode-ledgers.jsonl"


def caddy_binary() -> str | None:
    return shutil.which("caddy") or ("/usr/bin/caddy" if Path("/usr/bin/caddy").exists() else None)


def _replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its one occurrence of ``old`` replaced: the deploy file changing shape
    fails the harness loudly instead of leaving a setting behind."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"deploy/Caddyfile.cluster: expected {old!r} once, found {count}")
    return text.replace(old, new)


def caddyfile(listen_port: int, upstreams: Sequence[int], health_interval: str = "250ms") -> str:
    """deploy/Caddyfile.cluster for loopback: plain http on ``listen_port`` instead of the domain
    (no certificates), no admin endpoint (engineers share the machine), these ``upstreams``, and
    a faster health check; every other line (balancing policy, retries, /readyz health checks,
    streaming, headers, log filtering) is the deploy file's own."""
    text = CADDYFILE.read_text()
    # The global options block: the ACME e-mail becomes "no admin endpoint, no automatic HTTPS".
    start = text.index("\n{\n") + 1
    end = text.index("\n}\n", start) + 3
    text = text[:start] + "{\n\tadmin off\n\tauto_https off\n}\n" + text[end:]
    text = _replace_once(
        text, "{$REELHOOK_DOMAIN:reelhook.example.org} {", f"http://127.0.0.1:{listen_port} {{"
    )
    text = _replace_once(
        text,
        "reverse_proxy 127.0.0.1:8001 127.0.0.1:8002 127.0.0.1:8003 {",
        "reverse_proxy " + " ".join(f"127.0.0.1:{port}" for port in upstreams) + " {",
    )
    return _replace_once(text, "health_interval 2s", f"health_interval {health_interval}")


def require(component: str, present: bool) -> None:
    """Skip without ``component``, or fail under CI (a missing part must never pass there)."""
    import pytest

    if present:
        return
    reason = f"the multi-node harness needs {component}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# --- the ledger ---------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What one scenario sent and what came out of it. ``sent``: requests the scenario made
    (jobs, pings, API calls); ``acknowledged``: those answered 2xx; ``expected``: deliveries
    (event x subscriber) or events the acknowledged requests must produce; ``delivered``: how
    many of those arrived at least once; ``duplicates``: arrivals beyond the first; ``lost``:
    expected and never arrived (plus acknowledged requests with nothing stored)."""

    scenario: str
    sent: int
    acknowledged: int
    expected: int
    delivered: int
    duplicates: int
    lost: int
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.lost == 0 and self.delivered == self.expected

    def publish(self, directory: Path) -> None:
        line = json.dumps({**asdict(self), "balanced": self.balanced}, sort_keys=False)
        print(f"\nmultinode ledger: {line}")
        with (directory / LEDGER_FILE).open("a") as out:
            out.write(line + "\n")


# --- subscriber sinks -----------------------------------------------------------------------------


@dataclass
class Sinks:
    """Subscriber endpoints (one path per subscriber, all served by one ASGI app) recording
    every delivery as (path, webhook-id: the event id). Requests wait at ``gate`` while it is
    shut; each answer may be held ``delay`` seconds."""

    gate: anyio.Event = field(default_factory=anyio.Event)
    delay: float = 0.0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    total: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)
    # Which node sent each request: ``senders()`` names the node processes ({pid: number});
    # ``sent_by`` lists (path, event id, node number or 0 when unknown, monotonic time).
    senders: Callable[[], dict[int, int]] | None = None
    sent_by: list[tuple[str, str, int, float]] = field(default_factory=list)
    _ports: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate.set()

    def shut(self) -> None:
        self.gate = anyio.Event()

    def open(self) -> None:
        self.gate.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        body = await read_body(receive)
        # Who sent it and when, on arrival: a request held at the gate may be given up by its
        # sender meanwhile, and a closed connection can no longer be traced to a process.
        sender = (self._sender(scope), time.monotonic()) if self.senders is not None else None
        await self.gate.wait()
        if self.delay:
            await anyio.sleep(self.delay)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        key = (str(scope["path"]), headers["webhook-id"])
        self.counts[key] += 1
        if sender is not None:
            self.sent_by.append((*key, *sender))
        self.bodies.setdefault(key, json.loads(body))
        self.total += 1
        self.changed.set()
        self.changed = anyio.Event()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def _sender(self, scope: Scope) -> int:
        """The node whose connection this request came on (0: not found). Connections are
        pooled, so /proc is read once per connection, not once per request."""
        client_port = scope["client"][1]
        if not self._ports.get(client_port):  # unknown is looked up again, not remembered
            assert self.senders is not None
            self._ports[client_port] = sender_of(client_port, scope["server"][1], self.senders())
        return self._ports[client_port]

    async def wait_for(self, predicate: Callable[[], bool], within: float) -> None:
        with anyio.fail_after(within):
            while not predicate():
                with anyio.move_on_after(0.5):
                    await self.changed.wait()

    def tally(self, expected: set[tuple[str, str]]) -> tuple[int, int, int]:
        """(delivered, duplicates, lost) against the expected (path, event id) pairs; an
        arrival nobody expected fails the test."""
        strays = set(self.counts) - expected
        assert not strays, (
            f"{len(strays)} deliveries no subscription was owed: {sorted(strays)[:3]}"
        )
        delivered = sum(1 for pair in expected if self.counts[pair])
        duplicates = sum(n - 1 for n in self.counts.values() if n > 1)
        return delivered, duplicates, len(expected) - delivered


def sender_of(client_port: int, server_port: int, pids: dict[int, int]) -> int:
    """Which of ``pids`` ({pid: number}) holds the loopback connection from ``client_port`` to
    ``server_port``: its socket inode from /proc/net/tcp, then that inode among each process's
    file descriptors. 0 when none does."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
        if (local, remote) == (client_port, server_port):
            inode = fields[9]
            break
    if inode is None:
        return 0
    wanted = f"socket:[{inode}]"
    for pid, number in pids.items():
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return number
            except OSError:
                continue
    return 0


# --- processes ------------------------------------------------------------------------------------


def _environment(**variables: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REELHOOK_") and "proxy" not in k.lower()
    }
    env.update(variables)
    return env


class Proc:
    """A child process with its output in a log file; :meth:`stop` never leaves it behind."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, number: int) -> None:
        if self.alive:
            self.popen.send_signal(number)

    def output(self, tail: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    async def wait(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the process to exit; whether it did."""
        with anyio.move_on_after(within):
            while self.alive:  # noqa: ASYNC110 - a child process has no event to wait on
                await anyio.sleep(0.02)
        return not self.alive

    async def stop(self, grace: float = 10.0) -> None:
        """SIGCONT (it may be stopped), SIGTERM, then SIGKILL after ``grace`` seconds."""
        if not self.alive:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if not await self.wait(grace):
            self.popen.kill()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.popen.wait)

    def kill_now(self) -> None:
        """The synchronous last resort (a failing set-up, an interrupted test)."""
        if self.alive:
            self.popen.kill()
            self.popen.wait()


async def _until_answers(proc: Proc, url: str, within: float = 30.0) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
        with anyio.fail_after(within):
            while True:
                if not proc.alive:
                    raise RuntimeError(f"{proc.name} exited at start:\n{proc.output()}")
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)


@dataclass
class Node:
    """One ``reelhook serve`` process (node N on its own port and data directory)."""

    number: int
    port: int
    env: dict[str, str]
    log: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.env["REELHOOK_DATA_DIR"])

    def launch(self) -> None:
        self.proc = Proc(
            f"node {self.number}", [sys.executable, "-m", "service", "serve"], self.env, self.log
        )

    async def ready(self, within: float = 30.0) -> None:
        assert self.proc is not None
        await _until_answers(self.proc, f"{self.url}/readyz", within)

    async def start(self) -> None:
        self.launch()
        await self.ready()

    def kill(self) -> None:
        """SIGKILL, as a machine failing would."""
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.popen.wait()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop()

    async def metric(self, name: str) -> float:
        """A metric of this node's ``/metrics`` (the sum of its labelled series)."""
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            text = (await http.get(f"{self.url}/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Fleet:
    """The running cluster: ``lb`` is Caddy's URL (the public URL providers call back),
    ``nodes`` the reelhook processes, ``api`` an admin client through Caddy."""

    nodes: list[Node]
    lb: str
    sim: str
    database_url: str
    moto: str
    bucket: str
    api: httpx.AsyncClient
    caddy: Proc
    root: Path

    def client(self, node: Node | None = None, key: str = ADMIN_KEY) -> httpx.AsyncClient:
        """A client of one node directly (None: through Caddy), sending ``key``."""
        return httpx.AsyncClient(
            base_url=node.url if node is not None else self.lb,
            headers={"X-API-Key": key},
            trust_env=False,
            timeout=30,
        )

    def pids(self) -> dict[int, int]:
        """{pid: node number} of the node processes running now."""
        return {
            node.proc.popen.pid: node.number
            for node in self.nodes
            if node.proc is not None and node.proc.alive
        }

    async def sql(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    async def value(self, statement: str, *args: Any) -> Any:
        rows = await self.sql(statement, *args)
        return rows[0][0] if rows else None

    async def subscribe(self, sinks: Sinks, sink_url: str, count: int) -> dict[str, str]:
        """``count`` subscriptions to the sinks (paths /hook/0…); {subscription id: path}."""
        paths: dict[str, str] = {}
        for number in range(count):
            path = f"/hook/{number}"
            created = await self.api.post("/v1/subscriptions", json={"url": f"{sink_url}{path}"})
            assert created.status_code == 201, created.text
            paths[created.json()["id"]] = path
        return paths

    async def expected_pairs(self, paths: dict[str, str]) -> set[tuple[str, str]]:
        rows = await self.sql("SELECT event_id, subscription_id FROM deliveries")
        return {(paths[row["subscription_id"]], row["event_id"]) for row in rows}

    async def outbox_empty(self, within: float) -> None:
        """Wait until no delivery is pending or in flight (asked of the database)."""
        with anyio.fail_after(within):
            while await self.value(  # noqa: ASYNC110 - asks the database
                "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'inflight')"
            ):
                await anyio.sleep(0.1)

    async def leader(self) -> Node:
        """The node whose /metrics says it leads (exactly one among the live ones)."""
        live = [node for node in self.nodes if node.proc is not None and node.proc.alive]
        with anyio.fail_after(15):
            while True:
                leading = [node for node in live if await node.metric("reelhook_cluster_leader")]
                if len(leading) == 1:
                    return leading[0]
                await anyio.sleep(0.2)

    async def never_polled(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            stats = (await http.get(f"{self.sim}/_sim/stats")).json()
        assert stats["status_requests_total"] == 0, stats

    def logs(self) -> str:
        return "\n".join(
            f"--- {node.log.name}\n{node.proc.output(1500)}" for node in self.nodes if node.proc
        )


def node_environment(
    root: Path,
    number: int,
    port: int,
    *,
    database_url: str,
    lb: str,
    sim: str,
    moto: str,
    bucket: str,
    overrides: dict[str, str],
) -> dict[str, str]:
    variables = {
        "REELHOOK_HOST": "127.0.0.1",
        "REELHOOK_PORT": str(port),
        "REELHOOK_DATA_DIR": str(root / f"node{number}"),
        "REELHOOK_DATABASE_URL": database_url,
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SECRET_KEYS": SECRET_KEY,
        "REELHOOK_PUBLIC_URL": lb,
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8",
        "REELHOOK_NODE_TIMEOUT": str(NODE_TIMEOUT),
        "REELHOOK_LOG_LEVEL": "WARNING",
        "REELHOOK_RATE_LIMIT": "0",
        # Subscribers held at a shut gate must not time out, nor be given up as slow (fair
        # sharing, docs/architecture.md): every duplicate is then one the scenario caused, and
        # the bound on them stays exact.
        "REELHOOK_DELIVERY_TIMEOUT": "600",
        "REELHOOK_DELIVERY_SLOW_AFTER": "600",
        "REELHOOK_RETRY_SCHEDULE": "0,0.5,0.5,0.5",
        "REELHOOK_SUBMIT_RETRY_SCHEDULE": "0.2,0.5,1,1,2,2,4",
        "REELHOOK_SHUTDOWN_GRACE": "2",
        # Caddy checks /readyz every 250 ms here: a stopping node drains for a second first.
        "REELHOOK_DRAIN": "1",
        "REELHOOK_MIRROR_OUTPUTS": "false",
        "REELHOOK_BLOB_URL": f"s3://{bucket}/videos",
        "REELHOOK_S3_ENDPOINT_URL": moto,
        "REELHOOK_S3_REGION": "us-east-1",
        "REELHOOK_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "REELHOOK_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    for provider, key in PROVIDER_KEYS.items():
        variables[f"REELHOOK_{provider.upper()}_API_KEY"] = key
        variables[f"REELHOOK_{provider.upper()}_BASE_URL"] = f"{sim}/{provider}"
    variables.update({f"REELHOOK_{name}": value for name, value in overrides.items()})
    return _environment(**variables)


def migrate(database_url: str, log: Path) -> None:
    """``reelhook migrate`` on the database, as an operator runs it before starting nodes."""
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "service", "migrate"],
            env=_environment(REELHOOK_DATABASE_URL=database_url, REELHOOK_SECRET_KEYS=SECRET_KEY),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            check=True,
            timeout=60,
        )


@asynccontextmanager
async def fleet(
    root: Path,
    database_url: str,
    moto: str,
    *,
    count: int = 3,
    scenario: dict[str, Any] | None = None,
    migrate_first: bool = True,
    **overrides: str,
) -> AsyncIterator[Fleet]:
    """Start the simulator, ``count`` nodes on ``database_url`` (after ``reelhook migrate``
    unless ``migrate_first`` is False: then the nodes, starting at once, migrate it themselves
    under the advisory lock) and Caddy in front; yield the :class:`Fleet`; stop them all.

    ``scenario``: the simulator's global scenario (service.sim.Scenario fields); ``overrides``:
    REELHOOK_* settings of every node (prefix dropped).
    """
    caddy = caddy_binary()
    assert caddy is not None
    await anyio.Path(root).mkdir(parents=True, exist_ok=True)
    lb_port, sim_port = free_port(), free_port()
    lb, sim = f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{sim_port}"
    bucket = bucket_name()
    async with s3_client(moto) as s3:
        await s3.create_bucket(Bucket=bucket)
    procs: list[Proc] = []
    nodes: list[Node] = []
    try:
        simulator = Proc(
            "simulator",
            [
                sys.executable,
                "-m",
                "tests.multinode",
                "simulator",
                str(sim_port),
                json.dumps({"delay": 1.0, **(scenario or {})}),
            ],
            _environment(),
            root / "simulator.log",
        )
        procs.append(simulator)
        if migrate_first:
            await anyio.to_thread.run_sync(migrate, database_url, root / "migrate.log")
        for number in range(1, count + 1):
            port = free_port()
            env = node_environment(
                root,
                number,
                port,
                database_url=database_url,
                lb=lb,
                sim=sim,
                moto=moto,
                bucket=bucket,
                overrides=overrides,
            )
            nodes.append(Node(number, port, env, root / f"node{number}.log"))
        for node in nodes:  # all at once: start-up is mostly importing
            node.launch()
            assert node.proc is not None
            procs.append(node.proc)
        await _until_answers(simulator, f"{sim}/_sim/stats")
        for node in nodes:
            await node.ready(within=60)
        (root / "Caddyfile").write_text(caddyfile(lb_port, [node.port for node in nodes]))
        caddy_proc = Proc(
            "caddy",
            [caddy, "run", "--config", str(root / "Caddyfile"), "--adapter", "caddyfile"],
            _environment(XDG_DATA_HOME=str(root / "caddy"), XDG_CONFIG_HOME=str(root / "caddy")),
            root / "caddy.log",
        )
        procs.append(caddy_proc)
        await _until_answers(caddy_proc, f"{lb}/healthz")
        async with httpx.AsyncClient(
            base_url=lb, headers={"X-API-Key": ADMIN_KEY}, trust_env=False, timeout=30
        ) as api:
            yield Fleet(nodes, lb, sim, database_url, moto, bucket, api, caddy_proc, root)
    finally:
        with anyio.CancelScope(shield=True):
            await stop_all([node.proc for node in nodes if node.proc is not None] + procs)


async def stop_all(procs: list[Proc]) -> None:
    """Stop every process at once (each: SIGCONT, SIGTERM, SIGKILL after its grace); whatever
    goes wrong, none is left running."""
    try:
        async with anyio.create_task_group() as tg:
            for proc in procs:
                tg.start_soon(proc.stop)
    finally:
        for proc in procs:
            proc.kill_now()


@asynccontextmanager
async def served_sinks(sinks: Sinks) -> AsyncIterator[str]:
    """The sinks on a loopback uvicorn in this event loop; yields their base URL."""
    async with AsyncExitStack() as stack:
        yield await stack.enter_async_context(run_server(sinks))


@contextmanager
def elapsed() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started


def _serve_simulator(port: int, scenario: str) -> None:
    import uvicorn

    from service.sim import Scenario, Simulator, create_sim_app

    simulator = Simulator(Scenario().updated(json.loads(scenario)), api_keys=PROVIDER_KEYS)
    uvicorn.run(
        create_sim_app(simulator), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["simulator"]:
        _serve_simulator(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit("usage: python -m tests.multinode simulator PORT SCENARIO_JSON")
