"""Prometheus metrics of the master. Everything takes a registry, so each test gets a fresh one."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from converter_common.profiles import BUILTIN_PROFILES
from converter_common.version import package_version
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from master.database import DatabaseUnavailable
from master.paths import free_bytes
from master.store import Job, JobStore

# Seconds from 50 ms to 12 h: queue waits and whole jobs on multi-GB sources.
LONG_BUCKETS = (0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class JobsByStatusCollector(Collector):
    """``converter_master_jobs{status}`` read from the database at scrape time, so it can never drift (absent while
    the database is unreachable)."""

    def __init__(self, store: JobStore):
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._store.counts_by_status()
        except DatabaseUnavailable:
            return
        family = GaugeMetricFamily("converter_master_jobs", "Jobs in the queue by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


class DatabaseCollector(Collector):
    """The queue's database connections, read at scrape time: the pool's connections by state (SQLite: its one
    connection, always idle between statements), requests waiting for one, and outages that ended."""

    def __init__(self, store: JobStore):
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self._store.connection_state()
        connections = GaugeMetricFamily("converter_master_db_connections",
                                        "Connections to the queue's database, by state (in_use, idle).",
                                        labels=["state"])
        connections.add_metric(["in_use"], state.in_use)
        connections.add_metric(["idle"], state.idle)
        yield connections
        yield GaugeMetricFamily("converter_master_db_waiting", "Statements waiting for a database connection.",
                                value=state.waiting)
        yield GaugeMetricFamily("converter_master_db_available",
                                "1 while the queue's database answers, 0 while it is unreachable.",
                                value=1 if self._store.available else 0)
        yield CounterMetricFamily("converter_master_db_reconnects",
                                  "Times the queue's database became reachable again after an outage.",
                                  value=self._store.reconnects)


class ClaimsPausedCollector(Collector):
    """Whether claims are paused, read from the database at scrape time: ``converter_master_queue_paused`` (0/1)
    and ``converter_master_workers_not_claiming{reason}``: workers paused by an operator, and workers outside their
    ``worker.schedule`` windows as they last said."""

    def __init__(self, store: JobStore):
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            paused_at, workers = self._store.queue_paused_at(), self._store.list_workers()
        except DatabaseUnavailable:
            return
        yield GaugeMetricFamily("converter_master_queue_paused", "1 while the whole queue is paused (no claims).",
                                value=0 if paused_at is None else 1)
        family = GaugeMetricFamily("converter_master_workers_not_claiming",
                                   "Workers that claim nothing now: paused by an operator, or outside their"
                                   " schedule.", labels=["reason"])
        family.add_metric(["paused"], sum(1 for w in workers if w.paused_at is not None))
        family.add_metric(["scheduled_off"], sum(1 for w in workers if w.scheduled_off))
        yield family


class WebhookDeliveriesCollector(Collector):
    """``converter_master_webhook_deliveries{status}``: the outbox's deliveries by status (pending, sending,
    delivered, failed), read from the database at scrape time (every master sees the same)."""

    def __init__(self, store: JobStore):
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._store.webhook_delivery_counts()
        except DatabaseUnavailable:
            return
        family = GaugeMetricFamily("converter_master_webhook_deliveries", "Webhook deliveries in the outbox, by"
                                   " status.", labels=["status"])
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


class MasterMetrics:
    def __init__(self, registry: CollectorRegistry, store: JobStore, storage_root: Path,
                 online_window: Callable[[], float], profiles: Iterable[str] = tuple(BUILTIN_PROFILES)):
        self.registry = registry
        registry.register(JobsByStatusCollector(store))
        registry.register(DatabaseCollector(store))
        registry.register(ClaimsPausedCollector(store))
        registry.register(WebhookDeliveriesCollector(store))
        self.webhook_attempts = Counter("converter_master_webhook_attempts", "Webhook delivery attempts this master"
                                        " made, by subscription, event and outcome (delivered, retried, failed).",
                                        ["subscription", "event", "outcome"], registry=registry)
        self.webhook_attempt_seconds = Histogram("converter_master_webhook_attempt_seconds",
                                                 "Time of one webhook delivery attempt.", buckets=HTTP_BUCKETS,
                                                 registry=registry)
        self.bytes_saved = Counter("converter_master_bytes_saved", "Source bytes minus output bytes of completed"
                                   " jobs whose output is smaller, by profile.", ["profile"], registry=registry)
        for profile in profiles:  # the master's: built-in and configured
            self.bytes_saved.labels(profile)
        self.jobs_submitted = Counter("converter_master_jobs_submitted", "Jobs accepted by POST /api/jobs.",
                                      registry=registry)
        self.jobs_completed = Counter("converter_master_jobs_completed", "Jobs whose output was stored.",
                                      registry=registry)
        self.jobs_failed = Counter("converter_master_jobs_failed", "Jobs that ended failed.", registry=registry)
        self.health_checks = Counter("converter_master_health_checks", "Health checks completed (profile health-check),"
                                     " by result: healthy, unhealthy (FFmpeg reported errors).", ["result"],
                                     registry=registry)
        for result in ("healthy", "unhealthy"):
            self.health_checks.labels(result)
        self.jobs_requeued = Counter("converter_master_jobs_requeued", "Jobs sent back to pending, by reason.",
                                     ["reason"], registry=registry)
        for reason in ("retryable_failure", "lease_expired", "released"):
            self.jobs_requeued.labels(reason)
        self.queue_wait = Histogram("converter_master_queue_wait_seconds", "Submit to first claim.",
                                    buckets=LONG_BUCKETS, registry=registry)
        self.job_duration = Histogram("converter_master_job_duration_seconds", "Submit to completed.",
                                      buckets=LONG_BUCKETS, registry=registry)
        self.bytes_served = Counter("converter_master_bytes_served", "Source bytes sent to workers.",
                                    registry=registry)
        self.bytes_received = Counter("converter_master_bytes_received", "Upload body bytes received.",
                                      registry=registry)
        self.uploads_expired = Counter("converter_master_uploads_expired",
                                       "Resumable uploads removed because nobody continued them before they expired,"
                                       " by kind (source, output).", ["kind"], registry=registry)
        for kind in ("source", "output"):
            self.uploads_expired.labels(kind)
        self.object_store_bytes = Counter("converter_master_object_store_bytes",
                                          "Bytes moved to (upload) or from (download) the object store: through the"
                                          " master, and the parts of outputs workers sent there directly.",
                                          ["direction"], registry=registry)
        self.presigned_urls = Counter("converter_master_presigned_urls", "Presigned URLs issued, by operation.",
                                      ["operation"], registry=registry)
        self.object_store_errors = Counter("converter_master_object_store_errors",
                                           "Object-store calls that failed, by operation.", ["operation"],
                                           registry=registry)
        for direction in ("upload", "download"):
            self.object_store_bytes.labels(direction)
        for operation in ("get", "put_part"):
            self.presigned_urls.labels(operation)
        for operation in ("head", "get", "put", "delete", "list", "create_upload", "list_parts", "complete_upload",
                          "abort_upload", "list_uploads"):
            self.object_store_errors.labels(operation)
        self.uploads_aborted = Counter("converter_master_object_store_uploads_aborted",
                                       "Multipart uploads the master aborted because no job used them any more.",
                                       registry=registry)
        self.jobs_claimed = Counter("converter_master_jobs_claimed", "Jobs this master handed to a worker.",
                                    registry=registry)
        self.job_notices = Counter("converter_master_job_notices",
                                   "NOTIFY wake-ups heard from the database (PostgreSQL: jobs another master made"
                                   " claimable).", registry=registry)
        self.job_notices_reconnects = Counter("converter_master_job_notices_reconnects",
                                              "Times the NOTIFY listening connection listened again after losing"
                                              " the database.", registry=registry)
        self.http_duration = Histogram("converter_master_http_request_duration_seconds",
                                       "HTTP requests by handler class, method and status code.",
                                       ["handler", "method", "code"], buckets=HTTP_BUCKETS, registry=registry)
        workers_seen = Gauge("converter_master_workers_seen", "Workers that ever registered.", registry=registry)
        workers_seen.set_function(_unless_unavailable(lambda: len(store.list_workers())))
        workers_active = Gauge("converter_master_workers_active", "Workers seen within the online window.",
                               registry=registry)
        workers_active.set_function(_unless_unavailable(
            lambda: sum(1 for w in store.list_workers() if time.time() - w.last_seen_at <= online_window())))
        free = Gauge("converter_master_storage_free_bytes", "Free bytes on the storage root's filesystem.",
                     registry=registry)
        free.set_function(lambda: free_bytes(storage_root))
        Info("converter_master_build", "Version of the running master.", registry=registry).info(
            {"version": package_version()})

    def job_claimed(self, job: Job) -> None:
        self.jobs_claimed.inc()
        if job.attempts == 1 and job.claimed_at is not None:
            self.queue_wait.observe(max(0.0, job.claimed_at - job.created_at))

    def job_completed(self, job: Job) -> None:
        self.jobs_completed.inc()
        if job.saved_bytes is not None and job.saved_bytes > 0:
            self.bytes_saved.labels(job.profile).inc(job.saved_bytes)
        if job.finished_at is not None:
            self.job_duration.observe(max(0.0, job.finished_at - job.created_at))

    def health_checked(self, job: Job) -> None:
        """A health check completed (no output: not in ``jobs_completed``), counted by its result."""
        if job.finished_at is not None:
            self.job_duration.observe(max(0.0, job.finished_at - job.created_at))
        self.health_checks.labels("healthy" if job.health and job.health.get("healthy") else "unhealthy").inc()

    def job_failed_or_requeued(self, job: Job, reason: str) -> None:
        if job.status.value == "failed":
            self.jobs_failed.inc()
        else:
            self.jobs_requeued.labels(reason).inc()


def _unless_unavailable(read: Callable[[], float]) -> Callable[[], float]:
    """A gauge's reading, NaN while the database is unreachable (the rest of the scrape still answers)."""
    def reading() -> float:
        try:
            return read()
        except DatabaseUnavailable:
            return math.nan
    return reading
