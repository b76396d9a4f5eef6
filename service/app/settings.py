"""Settings, read once from ``REELHOOK_*`` environment variables."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from service.jobs.catalog import MODELS

PROVIDERS = ("trinetra", "apiframe", "segmind")

DEFAULT_BASE_URLS = {
    "trinetra": "https://brahmand-api.bulletshorts.co",
    "apiframe": "https://api.apiframe.ai",
    "segmind": "https://api.segmind.com",
}

DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
# Seconds before each resubmission of a throttled or failed provider submit (about 42 min in all,
# inside the default one-hour job deadline).
DEFAULT_SUBMIT_RETRY_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0)
# Seconds before the 2nd, 3rd and 4th try of an output download that failed in a way that may pass.
DEFAULT_MIRROR_RETRY_SCHEDULE = (1.0, 10.0, 60.0)


class SettingsError(ValueError):
    """A setting has a value reelhook cannot start with; each line of the message names one
    variable and its problem."""


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where one provider's API is and how to authenticate (``api_key`` None: no account)."""

    name: str
    base_url: str
    api_key: str | None


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where blobs live when ``REELHOOK_BLOB_URL`` is ``s3://bucket/prefix``. Credentials None:
    botocore's own chain (``AWS_*`` variables, instance roles). The secret is left out of
    ``repr`` so it cannot reach a log line."""

    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything reelhook is configured with. Build it with :func:`load_settings`."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    # None: the embedded SQLite file in ``data_dir``; else a sqlite:/// or postgresql:// URL.
    database_url_setting: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    env: str = "development"
    admin_key: str | None = None
    secret_keys: tuple[str, ...] = ()
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    sim_delay: float = 5.0
    # Mount the simulator even though the server listens beyond loopback (development only).
    sim_public: bool = False
    allow_private_subscribers: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    # The least delay before retrying a delivery that timed out or was answered 429.
    retry_overload_floor: float = 60.0
    delivery_timeout: float = 15.0
    # An attempt unanswered this long gives its shared send slot back (service/delivery).
    delivery_slow_after: float = 2.0
    disable_after: float = 432000.0
    job_deadline: float = 3600.0
    job_deadlines: Mapping[str, float] = field(default_factory=dict)
    mirror_outputs: bool = True
    mirror_max_bytes: int = 524288000
    mirror_timeout: float = 600.0
    mirror_retry_schedule: tuple[float, ...] = DEFAULT_MIRROR_RETRY_SCHEDULE
    max_callback_bytes: int = 1048576
    ingest_queue: int = 5000
    ingest_batch: int = 256
    delivery_concurrency: int = 256
    subscription_concurrency: int = 8
    segmind_concurrency: int = 32
    provider_timeout: float = 30.0
    segmind_timeout: float = 600.0
    segmind_resubmit: bool = False
    file_link_ttl: float = 7 * 24 * 3600.0
    secret_rotation_grace: float = 86400.0
    shutdown_grace: float = 10.0
    # Seconds a stopping node keeps serving while /readyz says it is draining, so a load
    # balancer's health check takes it out first (docs/scaling.md); 0: stop at once.
    drain: float = 0.0
    submit_retry_schedule: tuple[float, ...] = DEFAULT_SUBMIT_RETRY_SCHEDULE
    retention: float = 30 * 24 * 3600.0
    rate_limit: float = 100.0
    rate_burst: int = 200
    log_format: str = "text"
    log_level: str = "INFO"
    stream_keepalive: float = 15.0
    # PostgreSQL only: seconds without a heartbeat after which a node counts as dead.
    node_timeout: float = 10.0
    # Per-key quotas (docs/architecture.md, "Fair sharing"): standing subscriptions and open
    # event streams one API key may hold.
    max_subscriptions_per_key: int = 1000
    max_streams_per_key: int = 100
    # Bounded inbound memory (service/jobs/inbound.py) and slow clients (service/app/server.py).
    inbound_buffer_bytes: int = 67108864
    callback_concurrency: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    cors_origins: tuple[str, ...] = ()
    allow_http_subscribers: bool = True
    stream_token_ttl: float = 600.0
    # None: blobs in the data directory's ``blobs/`` folder (the default).
    s3: S3Settings | None = None

    @property
    def database_path(self) -> Path:
        """The embedded SQLite file (used when no ``REELHOOK_DATABASE_URL`` names another)."""
        return self.data_dir / "reelhook.db"

    @property
    def database_url(self) -> str:
        """Where the store is: ``REELHOOK_DATABASE_URL``, or the SQLite file in ``data_dir``."""
        return self.database_url_setting or f"sqlite:///{self.database_path}"

    @property
    def uses_postgresql(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def deadline_for(self, model: str) -> float:
        """Seconds a job of ``model`` may wait for its terminal callback."""
        return self.job_deadlines.get(model, self.job_deadline)

    @property
    def simulated_providers(self) -> list[str]:
        """Providers served by the built-in simulator: those without a key, in development only.

        In production an unauthenticated simulator would let anyone make reelhook send requests,
        so a provider without a key is simply unavailable there.
        """
        if self.env == "production":
            return []
        if not self.sim_public and not _loopback(self.host):
            # Reachable from other machines: only when asked for (REELHOOK_SIM_PUBLIC=true).
            return []
        return [name for name, p in self.providers.items() if p.api_key is None]


class _Reader:
    """Reads typed values from an environment mapping, naming the variable in every error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(f"REELHOOK_{name}")
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def fail(self, name: str, message: str) -> SettingsError:
        return SettingsError(f"REELHOOK_{name}: {message}")

    def string(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(name, f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise self.fail(name, f"expected a finite number, got {raw!r}")
        if value < minimum:
            raise self.fail(name, f"must be at least {minimum:g}, got {raw!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self.fail(name, f"expected an integer, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise self.fail(name, f"must be between {minimum} and {maximum}, got {raw!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise self.fail(name, f"expected true or false, got {raw!r}")

    def url(self, name: str, default: str) -> str:
        value = self.string(name, default).rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.fail(name, f"expected an http(s) URL, got {value!r}")
        if parts.query or parts.fragment:
            raise self.fail(name, "must not carry a query or fragment")
        return value


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build :class:`Settings` from ``environ`` (normally ``os.environ``).

    Raises :class:`SettingsError` with one line naming the first bad variable.
    """
    read = _Reader(environ)
    host = read.string("HOST", "127.0.0.1")
    port = read.integer("PORT", 8000, minimum=0, maximum=65535)
    env = read.string("ENV", "development")
    if env not in ("development", "production"):
        raise read.fail("ENV", f"expected development or production, got {env!r}")
    public_url = read.url("PUBLIC_URL", f"http://{_url_host(host)}:{port}")

    secret_keys = tuple(k.strip() for k in (read.raw("SECRET_KEYS") or "").split(",") if k.strip())
    if any(len(k) < 16 for k in secret_keys):
        raise read.fail("SECRET_KEYS", "each key must be at least 16 characters")
    database_url = _database_url(read)
    if database_url is not None and not database_url.startswith("sqlite:") and not secret_keys:
        # Keys generated into one node's data directory would sign callback URLs and file links
        # the other nodes cannot verify.
        raise read.fail(
            "SECRET_KEYS",
            "several nodes on PostgreSQL must share their secret keys: set the same "
            "REELHOOK_SECRET_KEYS on every node",
        )

    providers = {
        name: ProviderSettings(
            name=name,
            base_url=read.url(f"{name.upper()}_BASE_URL", DEFAULT_BASE_URLS[name]),
            api_key=read.raw(f"{name.upper()}_API_KEY"),
        )
        for name in PROVIDERS
    }

    admin_key = read.raw("ADMIN_KEY")
    if admin_key is not None and len(admin_key) < 16:
        # An admin key can do everything, including minting keys; a short one is guessable.
        raise read.fail(
            "ADMIN_KEY",
            "must be at least 16 characters (leave it unset and reelhook generates one)",
        )

    if env == "production":
        # Every missing production requirement at once, one line each, so one restart fixes all.
        problems = []
        if urlsplit(public_url).scheme != "https":
            problems.append(
                read.fail(
                    "PUBLIC_URL",
                    f"production needs the https URL providers call back (got {public_url!r})",
                )
            )
        if not secret_keys:
            problems.append(
                read.fail(
                    "SECRET_KEYS",
                    "production needs configured secret keys (comma-separated, newest last, "
                    "each at least 16 characters)",
                )
            )
        if problems:
            raise SettingsError("\n".join(str(problem) for problem in problems))

    return Settings(
        host=host,
        port=port,
        data_dir=Path(read.string("DATA_DIR", "./data")),
        database_url_setting=database_url,
        public_url=public_url,
        env=env,
        admin_key=admin_key,
        secret_keys=secret_keys,
        providers=providers,
        sim_delay=read.number("SIM_DELAY", 5.0),
        sim_public=read.boolean("SIM_PUBLIC", False),
        allow_private_subscribers=_networks(read, "ALLOW_PRIVATE_SUBSCRIBERS"),
        retry_schedule=_schedule(read, "RETRY_SCHEDULE"),
        retry_overload_floor=read.number("RETRY_OVERLOAD_FLOOR", 60.0),
        delivery_timeout=read.number("DELIVERY_TIMEOUT", 15.0, minimum=0.1),
        delivery_slow_after=read.number("DELIVERY_SLOW_AFTER", 2.0, minimum=0.01),
        disable_after=read.number("DISABLE_AFTER", 432000.0),
        job_deadline=read.number("JOB_DEADLINE", 3600.0, minimum=1.0),
        job_deadlines=_per_model_seconds(read, "JOB_DEADLINES"),
        mirror_outputs=read.boolean("MIRROR_OUTPUTS", True),
        mirror_max_bytes=read.integer("MIRROR_MAX_BYTES", 524288000, minimum=1, maximum=2**62),
        mirror_timeout=read.number("MIRROR_TIMEOUT", 600.0, minimum=1.0),
        mirror_retry_schedule=_schedule(
            read, "MIRROR_RETRY_SCHEDULE", DEFAULT_MIRROR_RETRY_SCHEDULE
        ),
        max_callback_bytes=read.integer("MAX_CALLBACK_BYTES", 1048576, minimum=1024),
        ingest_queue=read.integer("INGEST_QUEUE", 5000, minimum=1),
        ingest_batch=read.integer("INGEST_BATCH", 256, minimum=1, maximum=10000),
        delivery_concurrency=read.integer("DELIVERY_CONCURRENCY", 256, minimum=1),
        subscription_concurrency=read.integer("SUBSCRIPTION_CONCURRENCY", 8, minimum=1),
        segmind_concurrency=read.integer("SEGMIND_CONCURRENCY", 32, minimum=1),
        provider_timeout=read.number("PROVIDER_TIMEOUT", 30.0, minimum=0.1),
        segmind_timeout=read.number("SEGMIND_TIMEOUT", 600.0, minimum=1.0),
        segmind_resubmit=read.boolean("SEGMIND_RESUBMIT", False),
        file_link_ttl=read.number("FILE_LINK_TTL", 7 * 24 * 3600.0, minimum=1.0),
        secret_rotation_grace=read.number("SECRET_ROTATION_GRACE", 86400.0),
        shutdown_grace=read.number("SHUTDOWN_GRACE", 10.0),
        drain=read.number("DRAIN", 0.0),
        submit_retry_schedule=_schedule(
            read, "SUBMIT_RETRY_SCHEDULE", DEFAULT_SUBMIT_RETRY_SCHEDULE
        ),
        retention=read.number("RETENTION", 30 * 24 * 3600.0),
        rate_limit=read.number("RATE_LIMIT", 100.0),
        rate_burst=read.integer("RATE_BURST", 200, minimum=1),
        log_format=_choice(read, "LOG_FORMAT", ("text", "json"), "text"),
        log_level=_choice(read, "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        stream_keepalive=read.number("STREAM_KEEPALIVE", 15.0, minimum=0.01),
        node_timeout=read.number("NODE_TIMEOUT", 10.0, minimum=0.2),
        max_subscriptions_per_key=read.integer("MAX_SUBSCRIPTIONS_PER_KEY", 1000, minimum=1),
        max_streams_per_key=read.integer("MAX_STREAMS_PER_KEY", 100, minimum=1),
        inbound_buffer_bytes=read.integer(
            "INBOUND_BUFFER_BYTES", 67108864, minimum=1024, maximum=2**62
        ),
        callback_concurrency=read.integer("CALLBACK_CONCURRENCY", 256, minimum=1),
        header_timeout=read.number("HEADER_TIMEOUT", 10.0, minimum=0.1),
        body_timeout=read.number("BODY_TIMEOUT", 30.0, minimum=0.1),
        cors_origins=_origins(read, "CORS_ORIGINS"),
        # Production refuses plain-http subscriber and callback URLs unless told otherwise.
        allow_http_subscribers=read.boolean("ALLOW_HTTP_SUBSCRIBERS", env != "production"),
        stream_token_ttl=read.number("STREAM_TOKEN_TTL", 600.0, minimum=1.0),
        s3=_s3(read),
    )


_S3_SETTINGS = ("S3_ENDPOINT_URL", "S3_REGION", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _s3(read: _Reader) -> S3Settings | None:
    """``REELHOOK_BLOB_URL=s3://bucket/prefix`` and its ``REELHOOK_S3_*`` companions. No error
    message ever quotes a credential."""
    raw = read.raw("BLOB_URL")
    if raw is None:
        for name in _S3_SETTINGS:
            if read.raw(name) is not None:
                raise read.fail(name, "is only used with REELHOOK_BLOB_URL=s3://bucket/prefix")
        return None
    parts = urlsplit(raw)
    if parts.scheme != "s3" or not parts.netloc:
        raise read.fail("BLOB_URL", f"expected s3://bucket/prefix, got {raw!r}")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise read.fail("BLOB_URL", "must be s3://bucket/prefix, with no credentials or query")
    if not _BUCKET.fullmatch(parts.netloc):
        raise read.fail("BLOB_URL", f"{parts.netloc!r} is not a valid S3 bucket name")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise read.fail("BLOB_URL", f"the prefix {prefix!r} has an empty or dot segment")
    endpoint = read.raw("S3_ENDPOINT_URL")
    if endpoint is not None:
        endpoint_parts = urlsplit(endpoint)
        if endpoint_parts.scheme not in ("http", "https") or not endpoint_parts.hostname:
            raise read.fail("S3_ENDPOINT_URL", f"expected an http(s) URL, got {endpoint!r}")
        if endpoint_parts.username or endpoint_parts.password:
            raise read.fail("S3_ENDPOINT_URL", "must not carry credentials (use the S3_* keys)")
    region = read.string("S3_REGION", "us-east-1")
    if not re.fullmatch(r"[a-z0-9-]{1,64}", region):
        raise read.fail("S3_REGION", f"expected a region such as eu-west-1, got {region!r}")
    key_id = read.raw("S3_ACCESS_KEY_ID")
    secret = read.raw("S3_SECRET_ACCESS_KEY")
    if (key_id is None) != (secret is None):
        missing = "S3_SECRET_ACCESS_KEY" if secret is None else "S3_ACCESS_KEY_ID"
        raise read.fail(
            missing, "set both REELHOOK_S3_ACCESS_KEY_ID and _SECRET_ACCESS_KEY, or neither"
        )
    return S3Settings(
        bucket=parts.netloc,
        prefix=prefix,
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        region=region,
        access_key_id=key_id,
        secret_access_key=secret,
    )


def _origins(read: _Reader, name: str) -> tuple[str, ...]:
    """Browser origins allowed to call the API (CORS): ``scheme://host[:port]``, comma-separated,
    or ``*`` for any. Credentials are never allowed cross-origin, so ``*`` exposes nothing a page
    could not already send with an API key it holds."""
    raw = read.raw(name)
    if raw is None:
        return ()
    origins = []
    for item in (part.strip() for part in raw.split(",")):
        if item == "*":
            origins.append(item)
            continue
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise read.fail(name, f"{item!r} is not an origin such as https://app.example.com or *")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(origins)


def _choice(read: _Reader, name: str, choices: tuple[str, ...], default: str) -> str:
    raw = read.raw(name)
    if raw is None:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise read.fail(name, f"expected one of {', '.join(choices)}, got {raw!r}")


def _loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _networks(
    read: _Reader, name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = read.raw(name)
    if raw is None:
        return ()
    networks = []
    for item in raw.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise read.fail(name, f"{item.strip()!r} is not a CIDR such as 127.0.0.0/8") from None
    return tuple(networks)


def _schedule(
    read: _Reader, name: str, default: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
) -> tuple[float, ...]:
    raw = read.raw(name)
    if raw is None:
        return default
    try:
        schedule = tuple(float(item) for item in raw.split(","))
    except ValueError:
        raise read.fail(name, f"expected comma-separated seconds, got {raw!r}") from None
    if not all(math.isfinite(delay) for delay in schedule):
        raise read.fail(name, "delays must be finite numbers")
    if not schedule:
        raise read.fail(name, "needs at least one delay")
    if any(delay < 0 for delay in schedule):
        raise read.fail(name, "delays must not be negative")
    return schedule


def _per_model_seconds(read: _Reader, name: str) -> dict[str, float]:
    """``model=seconds`` pairs, comma-separated, e.g. ``segmind/kling-2.5-turbo=900``."""
    raw = read.raw(name)
    if raw is None:
        return {}
    values: dict[str, float] = {}
    for item in raw.split(","):
        model, equals, seconds = (part.strip() for part in item.partition("="))
        if not equals or not model:
            raise read.fail(name, f"expected model=seconds pairs, got {item.strip()!r}")
        if model not in MODELS:
            raise read.fail(name, f"unknown model {model!r} (models: {', '.join(MODELS)})")
        try:
            value = float(seconds)
        except ValueError:
            raise read.fail(name, f"expected seconds for {model}, got {seconds!r}") from None
        if not math.isfinite(value) or value < 1:
            raise read.fail(name, f"{model} needs a deadline of at least 1 second, got {seconds!r}")
        values[model] = value
    return values


def _database_url(read: _Reader) -> str | None:
    """``REELHOOK_DATABASE_URL``: unset, ``sqlite:///path`` or ``postgresql://…``."""
    value = read.raw("DATABASE_URL")
    if value is None or not value.strip():
        return None
    value = value.strip()
    scheme = urlsplit(value).scheme
    if scheme == "sqlite":
        if not value.startswith("sqlite:///") or len(value) == len("sqlite:///"):
            raise read.fail("DATABASE_URL", "a SQLite URL needs a file path: sqlite:///path")
        return value
    if scheme in ("postgresql", "postgres"):
        if not urlsplit(value).hostname and "host=" not in value:
            raise read.fail("DATABASE_URL", "a PostgreSQL URL needs a host: postgresql://host/db")
        return value
    raise read.fail(
        "DATABASE_URL",
        f"unknown scheme {scheme!r}: use sqlite:///path or postgresql://user@host/database",
    )
