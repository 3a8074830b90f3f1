"""Prometheus metrics, one registry per app so several apps (tests) never collide.

Served by several worker processes (``python -m service --workers N``), every value also goes to
the multiprocess directory, and a scrape adds up all workers' files, so totals are exact whichever
worker answers. Each gauge says how workers combine: in-flight requests add up, the rest take the
largest (a breaker open in any worker shows as open).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.errors import DeadlineExceeded

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by ``python -m service`` (service.__main__)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class _Fixed(Collector):
    """A registry's worth of one metric family made for one scrape."""

    def __init__(self, family: Metric):
        self.family = family

    def collect(self) -> list[Metric]:
        return [self.family]


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # Every metric declared here, one after another: name, help, labels and how workers combine.
        # The declarations look alike on purpose (`duplicates` lists them as one shape).
        r = self.registry
        self.responses = Counter(
            "din_http_responses", "Answers by route and status code", ["route", "code"], registry=r
        )
        self.stage_seconds = Histogram(
            "din_score_stage_seconds", "Time per /score stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.candidates = Histogram(
            "din_score_candidates",
            "Candidates per /score request",
            buckets=(1, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.degraded = Counter(
            "din_score_degraded", "Requests scored without the behaviour store", registry=r
        )
        self.rejected = Counter(
            "din_rejected", "Scoring requests refused with 503", ["reason"], registry=r
        )  # reason: overload (admission control) or deadline
        self.in_flight = Gauge(
            "din_in_flight",
            "Scoring requests admitted and not yet answered",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.expected_wait = Gauge(
            "din_expected_wait_seconds",
            "Expected wait of a new scoring request (admission; the largest of the workers)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_open = Gauge(
            "din_redis_breaker_open",
            "1 while the Redis circuit breaker is open or half-open (in any worker)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.events = Counter("din_events_appended", "Behaviours appended through /events", registry=r)
        self.impressions_logged = Counter(
            "din_impressions_logged", "Impressions written to the impression log", registry=r
        )
        self.impressions_dropped = Counter(
            "din_impressions_dropped",
            "Impressions not logged: buffer_full, sink_error or encode_error",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "din_model_reloads", "Model reload attempts that loaded or failed", ["result"], registry=r
        )
        self.reload_failing = Gauge(
            "din_model_reload_failing",
            "1 while the version the pointer names cannot be served",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_version = Gauge(
            "din_model_info",
            "The loaded model versions (the current one and its canary)",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Per version, so an experiment's arms can be compared live (realized CTR = clicks /
        # impressions); scripts/experiment.py decides from the logs, which attribute exactly.
        self.scored = Counter(
            "din_scored", "/score answers by the version that scored", ["version"], registry=r
        )
        self.served = Counter(
            "din_impressions_served",
            "Items returned by /score, by the version that ranked them",
            ["version"],
            registry=r,
        )
        # Over the impressions served, the clicks this predicts: its rate over din_clicks_total's is
        # the predicted CTR over the realized one (calibration), per version.
        self.predicted_clicks = Counter(
            "din_predicted_clicks",
            "Sum of the CTRs /score served with its items, by the version that ranked them",
            ["version"],
            registry=r,
        )
        self.clicks = Counter(
            "din_clicks",
            "Events naming a request_id, by the arm the user is in now (the version serving them)",
            ["version"],
            registry=r,
        )
        self.shadow = Counter(
            "din_shadow_answers",
            "Answers a shadow canary was to score again: scored, skipped (too many in flight) or failed",
            ["result"],
            registry=r,
        )
        self.shadow_logged = Counter(
            "din_shadow_logged", "Items a shadow canary scored and logged", registry=r
        )
        self.shadow_dropped = Counter(
            "din_shadow_dropped",
            "Shadow-scored items not logged: buffer_full, sink_error or encode_error",
            ["reason"],
            registry=r,
        )
        # Per API key id (never the key), so an operator sees who calls what and who is refused.
        self.authenticated = Counter(
            "din_authenticated_requests",
            "Requests let through, by key id and scope",
            ["key", "scope"],
            registry=r,
        )
        self.auth_refused = Counter(
            "din_auth_refused",
            "Requests refused by authentication: missing, invalid, scope or no_keys",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "din_rate_limited", "Write requests refused past their key's rate (429)", ["key"], registry=r
        )
        self.versions: set[str] = set()

    def set_models(self, versions: set[str]) -> None:
        for gone in self.versions - versions:
            # Zeroed, not only removed: another worker's file may still be read for it. Multiprocess
            # mode cannot remove a label at all (it warns), so there the zero is what a scrape reads.
            self.model_version.labels(version=gone).set(0)
            if MULTIPROC_DIR_ENV not in os.environ:
                self.model_version.remove(gone)
        for version in versions:
            self.model_version.labels(version=version).set(1)
        self.versions = set(versions)

    def count_error(self, error: Exception) -> None:
        """Called for every error answer; a deadline that passed is a refusal like an overload."""
        if isinstance(error, DeadlineExceeded):
            self.rejected.labels(reason="deadline").inc()

    def scrape(self, dead_letters: dict[str, int] | None = None) -> bytes:
        """The text exposition: this app's registry, or every worker's files in multiprocess mode;
        with the exporter's counts of records it set aside, read from Redis for this scrape."""
        if MULTIPROC_DIR_ENV not in os.environ:
            text = generate_latest(self.registry)
        else:
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            text = generate_latest(combined)
        if dead_letters is None:
            return text
        family = CounterMetricFamily(
            "din_feedback_dead_letters",
            "Served records the feedback export could not use and set aside in the dead-letter stream",
            labels=["kind"],
        )
        for kind, n in sorted(dead_letters.items()):
            family.add_metric([kind], n)
        return text + generate_latest(_Fixed(family))

    def process_exited(self) -> None:
        """Drops this worker's live gauges, so a stopped worker no longer counts."""
        if MULTIPROC_DIR_ENV in os.environ:
            multiprocess.mark_process_dead(os.getpid())
