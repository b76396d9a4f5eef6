from __future__ import annotations

import functools
import inspect
import itertools
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx._config as httpx_config
import httpx._transports.default as httpx_transports
import pytest
from starlette.types import ASGIApp

from service.app.settings import Settings, load_settings
from service.sim import Simulator
from service.storage.database import Database
from tests.postgres import Cluster, ReusedDatabase, throwaway_cluster
from tests.servers import loopback_socket, url_of
from tests.support import ADMIN_KEY, api_client, in_process, store_target

SettingsFactory = Callable[..., Settings]


STORES = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store",
        choices=STORES,
        default=os.environ.get("REELHOOK_TEST_STORE", "sqlite"),
        help="the store every reelhook in the suite runs on (the conformance run: both pass); "
        "default $REELHOOK_TEST_STORE or sqlite",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about SQLite itself (its files, backups)"
    )
    config.addinivalue_line(
        "markers",
        "one_store(reason): the test's reelhook keeps its own store whatever --store says, so "
        "it runs in the SQLite pass only (the PostgreSQL pass would repeat it unchanged)",
    )
    config.addinivalue_line(
        "markers",
        "multinode: reelhook processes on a PostgreSQL of their own whatever --store says "
        "(tests/test_multinode.py); run once, in the PostgreSQL pass",
    )
    _build_schemathesis_tests_when_they_run(config)


def _build_schemathesis_tests_when_they_run(config: pytest.Config) -> None:
    """schemathesis builds each operation's Hypothesis test (the coverage phase's cases, the
    explicit examples) while it collects, ~8 s of CPU for the document's operations, and every
    xdist worker collects every test: four builds of everything per pass, where the items are
    run once in all (tests/test_openapi.py, ``one_store``: in the SQLite pass; in the
    PostgreSQL pass they are collected and deselected). Here collection gets a stand-in carrying
    what collection reads (name, signature, marks, that it is a Hypothesis test), and
    :func:`pytest_runtest_setup` puts the test schemathesis builds, with the same arguments, in
    its place when the item is about to run: each operation's test is built once, where it runs,
    and runs as it would have. A document schemathesis cannot build a test from fails that test
    (at its setup) instead of a test named after the error."""
    # A private module of schemathesis (pinned below 5 in pyproject.toml): should a release
    # move it, the tests are built while collecting again, slower but the same.
    try:
        from schemathesis.pytest import _test_builder

        build = _test_builder.build_operation_test
    except (ImportError, AttributeError):
        return

    def deferred(**arguments: Any) -> Callable[..., Any]:
        return _DeferredOperationTest(functools.partial(build, **arguments), arguments)

    patch = pytest.MonkeyPatch()
    patch.setattr(_test_builder, "build_operation_test", deferred)
    config.add_cleanup(patch.undo)


class _DeferredOperationTest:
    """Stands for the Hypothesis test of one operation until :meth:`build` (see above)."""

    is_hypothesis_test = True

    def __init__(self, build: Callable[[], Callable[..., Any]], arguments: dict[str, Any]) -> None:
        test_func: Callable[..., Any] = arguments["test_func"]
        # What @given leaves of the signature: ``case`` (and any ``schema.given`` argument) is
        # drawn by Hypothesis, the rest are fixtures.
        given = {"case", *arguments["given_kwargs"]}
        self.build = build
        signature = inspect.signature(test_func)
        self.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name not in given]
        )
        self.__name__ = test_func.__name__
        self.__qualname__ = test_func.__qualname__
        self.__module__ = test_func.__module__
        self.__doc__ = test_func.__doc__
        self.__wrapped__ = test_func  # where the test is written (reports, locations)
        self.pytestmark = getattr(test_func, "pytestmark", [])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a schemathesis test ran unbuilt (tests/conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    deferred = getattr(item, "_obj", None)
    if isinstance(deferred, _DeferredOperationTest):
        item.obj = deferred.build()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test runs in one pass when the other would repeat it: tests about SQLite itself run
    in the SQLite pass, as do tests whose reelhook keeps its own SQLite whatever ``--store`` says
    (``one_store``); tests that start PostgreSQL nodes whatever ``--store`` says (they ask for
    ``pg_database`` or ``pg_cluster``, or are marked ``multinode``: tests/test_multinode.py, some
    of which start a PostgreSQL of their own) run in the PostgreSQL pass. The rest run in both.

    The others are deselected (listed as such), never skipped: under CI a skip would read as a
    pass that did not happen."""
    on_sqlite = config.getoption("--store") == "sqlite"

    def elsewhere(item: pytest.Item) -> bool:
        if on_sqlite:
            # Every collected test is a pytest.Function; an Item as such has no fixtures.
            fixtures: list[str] = getattr(item, "fixturenames", [])
            return (
                not {"pg_database", "pg_cluster"}.isdisjoint(fixtures)
                or item.get_closest_marker("multinode") is not None
            )
        return any(item.get_closest_marker(name) for name in ("sqlite_only", "one_store"))

    other_pass = [item for item in items if elsewhere(item)]
    if other_pass:
        config.hook.pytest_deselected(items=other_pass)
        items[:] = [item for item in items if not elsewhere(item)]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL 15 cluster for the whole session (see tests/postgres.py)."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_database(pg_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's cluster, dropped after the test."""
    name = f"t_{os.getpid()}_{next(_database_numbers)}"
    url = pg_cluster.create_database(name)
    yield url
    pg_cluster.drop_database(name)


_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_reused_database(pg_cluster: Cluster) -> Iterator[ReusedDatabase]:
    """The session's migrated database that each test empties before use (tests/postgres.py)."""
    reused = ReusedDatabase(pg_cluster, f"reused_{os.getpid()}")
    yield reused
    reused.close()


@pytest.fixture(autouse=True)
def _store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``--store postgresql`` every test's reelhook runs on a PostgreSQL database of its
    own, migrated and empty (a test that asks for ``pg_database`` gets that fresh one instead):
    :func:`settings_for` reads it from ``REELHOOK_TEST_DATABASE_URL``."""
    if request.config.getoption("--store") != "postgresql":
        monkeypatch.delenv("REELHOOK_TEST_DATABASE_URL", raising=False)
        return
    if "pg_database" in request.fixturenames:
        url = request.getfixturevalue("pg_database")
    else:
        url = request.getfixturevalue("pg_reused_database").emptied()
    monkeypatch.setenv("REELHOOK_TEST_DATABASE_URL", url)


@pytest.fixture(autouse=True, scope="session")
def _one_tls_context() -> Iterator[None]:
    """One default TLS context per test process, handed to every httpx client and app that asks
    for one. Loading the CA bundle costs about 65 ms of CPU per context, and the suite starts
    well over a thousand clients and apps; the contexts are built identically (certifi's bundle,
    verification on), so sharing one changes nothing a test can observe. Contexts built with
    other options (``verify=False``, a custom bundle) are still built fresh."""
    build = httpx_config.create_ssl_context
    default: list[ssl.SSLContext] = []

    def shared(
        verify: ssl.SSLContext | str | bool = True, cert: Any = None, trust_env: bool = True
    ) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        if not default:
            default.append(build())
        return default[0]

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(httpx, "create_ssl_context", shared)
        monkeypatch.setattr(httpx_transports, "create_ssl_context", shared)
        yield


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-scoped (as anyio's own default) so module-scoped async fixtures can share a loop."""
    return "asyncio"


def _clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback only; a proxy from the environment must not intercept them."""
    _clear_proxies(monkeypatch)


def assert_never_polled(simulators: list[Simulator]) -> None:
    """No simulator's status endpoint was asked: reelhook learns everything by callback."""
    polled = [sim.stats()["status_requests"] for sim in simulators if sim.status_requests]
    assert not polled, f"reelhook polled a provider's status endpoint: {polled}"


def _track_simulators(monkeypatch: pytest.MonkeyPatch) -> list[Simulator]:
    created: list[Simulator] = []
    original = Simulator.__init__

    def tracked(self: Simulator, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(Simulator, "__init__", tracked)
    return created


@pytest.fixture(autouse=True)
def simulators(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Simulator]]:
    """Every simulator a test creates (embedded in reelhook or served on its own); when the test
    ends, each must have answered zero status requests. Autouse: it holds across the suite."""
    created = _track_simulators(monkeypatch)
    yield created
    assert_never_polled(created)


def settings_for(data_dir: Path, **overrides: str) -> Settings:
    """Settings for a test whose data lives in ``data_dir``; ``overrides`` drop the prefix."""
    environ = {
        "REELHOOK_DATA_DIR": str(data_dir),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SECRET_KEYS": "test-secret-key-0123456789",
        "REELHOOK_SIM_DELAY": "0.2",
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8,::1/128",
        "REELHOOK_RETRY_SCHEDULE": "0,0.2,0.2",
        # Below asgi-lifespan's 5 s shutdown timeout, for tests that leave an attempt hanging.
        "REELHOOK_SHUTDOWN_GRACE": "1",
        # Tests name provider URLs like https://cdn.trinetra.ai/... that must never be
        # fetched; a test about mirroring turns it on (and serves its files on loopback).
        "REELHOOK_MIRROR_OUTPUTS": "false",
    }
    store = os.environ.get("REELHOOK_TEST_DATABASE_URL")
    if store:
        environ["REELHOOK_DATABASE_URL"] = store
    environ.update({f"REELHOOK_{key}": value for key, value in overrides.items()})
    return load_settings(environ)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """This pass's store (:func:`tests.support.store_target`), opened and migrated."""
    async with Database.open(store_target(tmp_path)) as database:
        yield database


@pytest.fixture
def settings_factory(tmp_path: Path) -> SettingsFactory:
    """Settings as the environment would give them: ``settings_factory(SIM_DELAY="0.2", ...)``."""

    def build(**overrides: str) -> Settings:
        return settings_for(tmp_path / "data", **overrides)

    return build


@pytest.fixture
async def client(settings_factory: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for a fresh reelhook (lifespan running), authenticated as admin."""
    async with api_client(settings_factory()) as http:
        yield http


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where nothing listens (bound, never listening): connections are refused."""
    with loopback_socket() as sock:
        yield url_of(sock)


@pytest.fixture
async def api(settings_factory: SettingsFactory, dead_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook in-process; its simulated providers sit at an unreachable PUBLIC_URL, and a submit
    that cannot reach them is tried once more at once, then fails."""
    settings = settings_factory(PUBLIC_URL=dead_url, SUBMIT_RETRY_SCHEDULE="0")
    async with api_client(settings) as http:
        yield http


@pytest.fixture(scope="module")
async def shared_app(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[ASGIApp]:
    """One reelhook in-process (lifespan running) for a whole test module, configured as ``api``
    (simulated providers at an unreachable PUBLIC_URL), without a rate limit. Use it through
    ``shared_api``. Under ``--store postgresql`` it has a database of its own for the module."""
    with pytest.MonkeyPatch.context() as monkeypatch, loopback_socket() as dead:
        _clear_proxies(monkeypatch)
        created = _track_simulators(monkeypatch)
        store: dict[str, str] = {"DATABASE_URL": ""}
        if request.config.getoption("--store") == "postgresql":
            cluster: Cluster = request.getfixturevalue("pg_cluster")
            name = f"m_{os.getpid()}_{next(_database_numbers)}"
            store["DATABASE_URL"] = cluster.create_database(name)
            request.addfinalizer(lambda: cluster.drop_database(name))
        settings = settings_for(
            tmp_path_factory.mktemp("shared") / "data",
            PUBLIC_URL=url_of(dead),
            SUBMIT_RETRY_SCHEDULE="0",
            RATE_LIMIT="0",
            **store,
        )
        async with in_process(settings) as (_, app):
            yield app
        assert_never_polled(created)


@pytest.fixture
async def shared_api(shared_app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own, sending the admin key, for the module's ``shared_app``.

    Only for tests that read or are refused: a test using it must leave nothing stored, so the
    next one (which may assert that nothing is stored) sees the same empty service. A test that
    creates anything takes a fresh ``api`` or ``client`` instead. Starting an app costs tens of
    milliseconds; a module of refusals pays it once.
    """
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=shared_app),
        base_url="http://reelhook.test",
        headers={"X-API-Key": ADMIN_KEY},
    ) as http:
        yield http
