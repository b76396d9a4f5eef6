"""reelhook's Prometheus metrics, in a registry of their own (one per application).

Counters and histograms move as things happen; the gauges that describe stored state (jobs by
status, outbox depth, oldest waiting delivery) are read from the store's indexes when scraped, at
most once per :data:`STATE_MIN_GAP` seconds and per :data:`STATE_GAP_FACTOR` times the last
read's duration (docs/performance-journal.md, "/readyz and /metrics over a million due deliveries").
"""

from __future__ import annotations

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from service.core.models import JobStatus
from service.jobs.callback_outcomes import CallbackOutcome
from service.storage import stats
from service.storage.database import Connection

# From loopback fan-out (milliseconds) to a subscriber that was down for a day.
_LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400,
)  # fmt: skip
# Trinetra and apiframe answer a submit in well under a second; a held Segmind request lasts
# as long as the video takes to render.
_CLAIM_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

STATE_MIN_GAP = 1.0
"""Seconds at least between two reads of the stored-state gauges: scrapes closer together (or
at once) share one read."""
STATE_GAP_FACTOR = 20.0
"""And at least this many times the last read's duration, so the reads take at most ~5 % of
the reader's time however large the tables grow and however often /metrics is scraped."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.callbacks = Counter(
            "reelhook_callbacks",
            "Provider callbacks received, by provider and verification outcome",
            ["provider", "outcome"],
            registry=registry,
        )
        self._callback_counts: dict[tuple[str, CallbackOutcome], Counter] = {}
        self.unknown_statuses = Counter(
            "reelhook_provider_unknown_statuses",
            "Verified provider updates whose status word reelhook does not know, by word",
            ["provider", "status"],
            registry=registry,
        )
        self.delivery_attempts = Counter(
            "reelhook_delivery_attempts",
            "Delivery attempts to subscribers, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.delivery_lag = Histogram(
            "reelhook_delivery_lag_seconds",
            "Time from an event's creation to its successful (2xx) delivery",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        # The claim runs under the write lock, so every ingest commit can wait behind it; it must
        # stay O(claim), never O(backlog) (docs/performance.md). 2 ms is the bound the bench checks.
        self.claim_duration = Histogram(
            "reelhook_delivery_claim_seconds",
            "Time the outbox claim's statements took inside its write transaction",
            buckets=_CLAIM_BUCKETS,
            registry=registry,
        )
        # Deliveries that never waited for a claim: against the claim histogram's count, how
        # much of the fan-out the claim loop still carries (docs/architecture.md, "A delivery").
        self.claimed_at_ingest = Counter(
            "reelhook_deliveries_claimed_at_ingest",
            "Deliveries written already claimed by the ingest batch and sent without a claim",
            registry=registry,
        )
        self.provider_latency = Histogram(
            "reelhook_provider_request_seconds",
            "Latency of job submissions to providers, until the answer's headers",
            ["provider"],
            buckets=_PROVIDER_BUCKETS,
            registry=registry,
        )
        self.provider_errors = Counter(
            "reelhook_provider_errors",
            "Job submissions to providers that failed, by reason",
            ["provider", "reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "reelhook_rate_limited_requests",
            "API requests refused with 429 because their key was over its rate",
            registry=registry,
        )
        self.pruned = Counter(
            "reelhook_pruned_rows",
            "Rows deleted by retention, by table",
            ["table"],
            registry=registry,
        )
        self.jobs = Gauge("reelhook_jobs", "Stored jobs by status", ["status"], registry=registry)
        self.nodes_alive = Gauge(
            "reelhook_cluster_nodes_alive",
            "Nodes sharing the store with a fresh heartbeat (1 on SQLite)",
            registry=registry,
        )
        self.leader = Gauge(
            "reelhook_cluster_leader",
            "1 when this node runs the singletons (deadlines, retention, stale-node sweep)",
            registry=registry,
        )
        self.outbox_depth = Gauge(
            "reelhook_outbox_depth",
            "Deliveries waiting to be sent or in flight",
            registry=registry,
        )
        self.oldest_pending_delivery = Gauge(
            "reelhook_oldest_pending_delivery_age_seconds",
            "Age of the oldest delivery waiting to be sent or in flight (0 when none)",
            registry=registry,
        )
        self._state_lock = anyio.Lock()
        self._state_next: float | None = None  # anyio.current_time() of the next read allowed
        self._oldest_created: float | None = None  # the oldest waiting delivery's created_at

    def callback_outcome(self, provider: str, outcome: CallbackOutcome) -> None:
        """A callback observer (see :mod:`service.callback_outcomes`)."""
        # Each (provider, outcome) child looked up once: ``labels`` checks and joins the label
        # values and takes a lock on every call (~2 µs per callback). Both are bounded sets (an
        # unknown provider is counted as "unknown" by the caller).
        child = self._callback_counts.get((provider, outcome))
        if child is None:
            child = self._callback_counts[(provider, outcome)] = self.callbacks.labels(
                provider=provider, outcome=outcome.value
            )
        child.inc()

    def unknown_status(self, provider: str, word: str) -> None:
        """Count an unknown status word (from a verified callback; cut to a short label)."""
        label = "".join(c for c in word.lower() if c.isalnum() or c in "_-")[:32] or "empty"
        self.unknown_statuses.labels(provider=provider, status=label).inc()

    async def refresh(self, conn: Connection, now: float) -> None:
        """Bring the gauges that describe stored state up to date (called at scrape time, ``now``
        by the service's clock).

        The counts are read from the store only when :data:`STATE_MIN_GAP` seconds and
        :data:`STATE_GAP_FACTOR` times the last read's duration have passed since the last read
        began; otherwise they are the last read's. Concurrent scrapes wait for one read. The
        oldest delivery's age is ``now`` minus its creation time on every call, so it grows
        between reads as it should."""
        async with self._state_lock:
            started = anyio.current_time()
            if self._state_next is None or started >= self._state_next:
                counts = await stats.jobs_by_status(conn)
                for status in JobStatus:
                    self.jobs.labels(status=status.value).set(counts.get(status.value, 0))
                depth, self._oldest_created = await stats.outbox(conn)
                self.outbox_depth.set(depth)
                took = anyio.current_time() - started
                self._state_next = started + max(STATE_MIN_GAP, STATE_GAP_FACTOR * took)
            oldest = self._oldest_created
        self.oldest_pending_delivery.set(max(0.0, now - oldest) if oldest is not None else 0.0)

    def cluster(self, nodes_alive: int, leader: bool) -> None:
        """Set the cluster figures (called at scrape time)."""
        self.nodes_alive.set(nodes_alive)
        self.leader.set(1 if leader else 0)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the ``Accept`` header asks for (OpenMetrics, or the
        Prometheus text format, 0.0.4 unless a newer version is asked for), with its type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
