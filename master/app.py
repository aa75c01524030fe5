"""The route table, and the server around it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import tornado.ioloop
import tornado.netutil
import tornado.web
from prometheus_client import CollectorRegistry

from converter_common.background_file_writer import BatchWriter
from converter_common import protocol
from converter_common.ratelimit import TokenBucket
from master.auth import Tokens
from master.config import MasterConfig
from master.console.events import EventsHandler
from master.console.pages import (JobPageHandler, LoginHandler, LogoutHandler, OverviewHandler, QueuePageHandler,
                                  RetryFailedHandler, RootHandler, StaticHandler, SubmitPageHandler,
                                  WorkersPageHandler, console_settings)
from master.console.session import cookie_secret
from master.database import DatabaseUnavailable
from master.http_server import JsonErrorHTTPServer
from master.handlers.base import NotFoundHandler, Services
from master.handlers.bucket_transfer import OutputCompleteHandler, OutputPartsHandler, SourceUrlHandler
from master.handlers.claim import ClaimHandler
from master.handlers.download_video import DownloadVideoHandler
from master.handlers.health import HealthHandler
from master.handlers.health_result import HealthResultHandler
from master.handlers.job_output import JobOutputHandler
from master.handlers.jobs import JobAttemptsHandler, JobCancelHandler, JobHandler, JobRetryHandler, JobsHandler
from master.handlers.lease import FailHandler, HeartbeatHandler, ReleaseHandler, SkipHandler
from master.handlers.metrics import MetricsHandler
from master.handlers.openapi import OpenApiHandler
from master.handlers.profiles import ProfilesHandler
from master.handlers.queue import QueueHandler, QueuePauseHandler, QueueResumeHandler
from master.handlers.stats import StatsHandler
from master.handlers.source_uploads import SourceUploadCompleteHandler, SourceUploadHandler, SourceUploadsHandler
from master.handlers.tus import TusCreationHandler, TusUploadHandler
from master.handlers.upload_video import UploadVideoHandler
from master.handlers.webhooks import WebhookDeliveriesHandler
from master.handlers.worker_complete import KeepSourceHandler, WorkerCompleteHandler
from master.handlers.workers import (WorkerPauseHandler, WorkerRegisterHandler, WorkerResumeHandler,
                                     WorkersHandler)
from master.intake import JobIntake
from master.metrics import MasterMetrics
from master.object_store import ObjectStoreError
from master.storage import BucketStorage, make_storage
from master.store import JobStore
from master.uploads import UploadRegistry
from master.wakeup import JobNotices, WakeUpSignal
from master.watch import BucketInboxWatcher, InboxWatcher
from master.webhooks import WebhookDispatcher

log = logging.getLogger("converter.master")
access_log = logging.getLogger("tornado.access")

JOB = r"(?P<job_id>[^/]+)"
WORKER = r"(?P<worker_id>[^/]+)"


def make_app(config: MasterConfig, store: JobStore, wakeup: WakeUpSignal | None = None,
             metrics: MasterMetrics | None = None, tokens: Tokens = Tokens(),
             receive_writer: Callable[..., BatchWriter] = BatchWriter) -> tornado.web.Application:
    metrics = metrics or new_metrics(config, store, CollectorRegistry())
    wakeup = wakeup or WakeUpSignal()
    storage = make_storage(config, metrics)
    services = Services(config=config, store=store, wakeup=wakeup, metrics=metrics,
                        uploads=UploadRegistry(config, store),
                        intake=JobIntake(config, store, metrics, wakeup, storage), storage=storage,
                        tokens=tokens, outbound=outbound_bucket(config), receive_writer=receive_writer)
    deps = {"services": services}
    routes = [
        (r"/healthz", HealthHandler),
        (r"/metrics", MetricsHandler),
        (r"/api/openapi.json", OpenApiHandler),
        (r"/api/profiles", ProfilesHandler),
        (protocol.JOBS, JobsHandler),
        (protocol.job_path(JOB), JobHandler),
        (protocol.job_path(JOB, "attempts"), JobAttemptsHandler),
        (protocol.job_path(JOB, "cancel"), JobCancelHandler),
        (protocol.job_path(JOB, "retry"), JobRetryHandler),
        (protocol.job_path(JOB, "output"), JobOutputHandler),
        (r"/api/workers", WorkersHandler),
        (rf"/api/workers/{WORKER}/pause", WorkerPauseHandler),
        (rf"/api/workers/{WORKER}/resume", WorkerResumeHandler),
        (r"/api/queue", QueueHandler),
        (r"/api/queue/pause", QueuePauseHandler),
        (r"/api/queue/resume", QueueResumeHandler),
        (r"/api/stats", StatsHandler),
        (r"/api/webhooks/deliveries", WebhookDeliveriesHandler),
        (protocol.WORKER_REGISTER, WorkerRegisterHandler),
        (protocol.WORKER_CLAIM, ClaimHandler),
        (protocol.WORKER_HEARTBEAT, HeartbeatHandler),
        (protocol.WORKER_FAIL, FailHandler),
        (protocol.WORKER_HEALTH_RESULT, HealthResultHandler),
        (protocol.WORKER_RELEASE, ReleaseHandler),
        (protocol.WORKER_DOWNLOAD, DownloadVideoHandler),
        (protocol.WORKER_UPLOAD, UploadVideoHandler),
        (protocol.WORKER_COMPLETE, WorkerCompleteHandler),
        (protocol.WORKER_SKIP, SkipHandler),
        (protocol.WORKER_KEEP_SOURCE, KeepSourceHandler),
        (protocol.WORKER_SOURCE_URL, SourceUrlHandler),
        (protocol.WORKER_OUTPUT_PARTS, OutputPartsHandler),
        (protocol.WORKER_OUTPUT_COMPLETE, OutputCompleteHandler),
        (protocol.SOURCE_UPLOADS, SourceUploadsHandler),
        (protocol.SOURCE_UPLOADS + r"/(?P<upload_id>[0-9a-f]{32})", SourceUploadHandler),
        (protocol.SOURCE_UPLOADS + r"/(?P<upload_id>[0-9a-f]{32})/complete", SourceUploadCompleteHandler),
        (protocol.UPLOADS, TusCreationHandler),
        (protocol.UPLOADS + r"/(?P<upload_id>[0-9a-f]{32})", TusUploadHandler),
        (r"/", RootHandler),
        (r"/console/", OverviewHandler),
        (r"/console/login", LoginHandler),
        (r"/console/logout", LogoutHandler),
        (r"/console/queue", QueuePageHandler),
        (rf"/console/jobs/{JOB}", JobPageHandler),
        (r"/console/workers", WorkersPageHandler),
        (r"/console/submit", SubmitPageHandler),
        (r"/console/retry-failed", RetryFailedHandler),
        (r"/console/events", EventsHandler),
        (r"/console/static/(?P<path>[a-z]+\.(?:js|css))", StaticHandler),
    ]
    return tornado.web.Application(
        [(pattern, handler, deps) for pattern, handler in routes],
        services=services,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=lambda handler: _log_request(handler, metrics),
        cookie_secret=cookie_secret(config, tokens),
        **console_settings(),
    )


def outbound_bucket(config: MasterConfig) -> TokenBucket | None:
    """The one token bucket all downloads of this master share (``server.outbound_limit``); None if unlimited."""
    limit = config.server.outbound_limit
    return TokenBucket(limit, burst=min(limit / 20, config.server.chunk_size)) if limit else None


def new_metrics(config: MasterConfig, store: JobStore, registry: CollectorRegistry) -> MasterMetrics:
    window = config.jobs.lease_seconds + config.jobs.max_claim_wait
    return MasterMetrics(registry, store, config.storage.root, online_window=lambda: window,
                         profiles=tuple(config.profiles))


def _log_request(handler: tornado.web.RequestHandler, metrics: MasterMetrics) -> None:
    """Tornado's access log line, plus the request-duration histogram (labels bounded: class, method, code)."""
    seconds = handler.request.request_time()
    label = getattr(handler, "metric_label", None) or type(handler).__name__
    metrics.http_duration.labels(label, handler.request.method, str(handler.get_status())).observe(seconds)
    status = handler.get_status()
    log_method = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    request = handler.request
    log_method("%d %s %s (%s) %.2fms", status, request.method, request.uri, request.remote_ip, 1000.0 * seconds)


@dataclass
class RunningMaster:
    server: JsonErrorHTTPServer
    reaper: tornado.ioloop.PeriodicCallback
    port: int
    metrics: MasterMetrics
    wakeup: WakeUpSignal
    watcher: InboxWatcher | BucketInboxWatcher | None = None
    upload_reaper: "AbandonedUploadReaper | None" = None
    notices: JobNotices | None = None
    webhooks: WebhookDispatcher | None = None

    def stop(self) -> None:
        self.reaper.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.notices is not None:
            self.notices.stop()
        if self.upload_reaper is not None:
            self.upload_reaper.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.server.stop()


def start_master(config: MasterConfig, store: JobStore, registry: CollectorRegistry | None = None,
                 tokens: Tokens = Tokens(), receive_writer: Callable[..., BatchWriter] = BatchWriter) -> RunningMaster:
    """Bind the HTTP server and start the lease reaper on the current IOLoop."""
    wakeup = WakeUpSignal()
    metrics = new_metrics(config, store, registry or CollectorRegistry())
    app = make_app(config, store, wakeup, metrics, tokens, receive_writer)
    services: Services = app.settings["services"]
    server = JsonErrorHTTPServer(
        app,
        max_body_size=config.server.max_upload_size,
        body_timeout=config.server.timeout,
        idle_connection_timeout=config.server.timeout,
        max_header_size=config.server.max_header_size,
        xheaders=False,
        chunk_size=config.server.body_chunk_size,
    )
    sockets = tornado.netutil.bind_sockets(config.server.port, config.server.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]

    # Workers whose leases were live when the master stopped get one lease to renew them before the reaper acts.
    store.extend_live_leases(time.time() + config.jobs.lease_seconds)

    def reap() -> None:
        first_miss = store.available  # the database logs its outage; one line here says the reaper waits for it
        try:
            reap_round()
        except DatabaseUnavailable as exc:
            (log.warning if first_miss else log.debug)("lease reaper: round skipped: %s", exc)

    reconnects_seen = store.reconnects

    def reap_round() -> None:
        nonlocal reconnects_seen
        if store.reconnects != reconnects_seen:
            # No heartbeat could be recorded while the database was away: as at start-up, one lease to renew them.
            store.extend_live_leases(time.time() + config.jobs.lease_seconds)
            reconnects_seen = store.reconnects
        for job in store.requeue_expired():
            log.warning("lease of job %s expired: now %s (attempt %d/%d)", job.id, job.status.value,
                        job.attempts, job.max_attempts)
            metrics.job_failed_or_requeued(job, "lease_expired")
        for upload in services.uploads.remove_expired():
            log.info("upload %s of job %s expired at offset %d of %d: removed", upload.id, upload.job_id,
                     upload.offset, upload.length)
            metrics.uploads_expired.labels(upload.kind).inc()
        store.explain_waiting(online_since=time.time() - config.jobs.lease_seconds - config.jobs.max_claim_wait)
        wakeup.send()

    reaper = tornado.ioloop.PeriodicCallback(reap, max(config.jobs.lease_seconds / 4, 0.05) * 1000)
    reaper.start()
    notices = None
    if store.dialect == "postgres":
        notices = JobNotices(str(store.path), wakeup, on_notice=metrics.job_notices.inc,
                             on_reconnect=metrics.job_notices_reconnects.inc)
        notices.start()
    upload_reaper = None
    if isinstance(services.storage, BucketStorage):
        upload_reaper = AbandonedUploadReaper(services.storage, store, metrics, grace=config.jobs.lease_seconds)
        upload_reaper.start()
    watcher = None
    if config.watch.inbox is not None:
        watcher = BucketInboxWatcher(services) if services.storage.in_bucket else InboxWatcher(services)
        watcher.start()
    webhooks = WebhookDispatcher(config.webhooks, store, metrics,
                                 online_window=lambda: config.jobs.lease_seconds + config.jobs.max_claim_wait)
    webhooks.start()
    return RunningMaster(server=server, reaper=reaper, port=port, metrics=metrics, wakeup=wakeup,
                         watcher=watcher, upload_reaper=upload_reaper, notices=notices, webhooks=webhooks)



class AbandonedUploadReaper:
    """Aborts the bucket's multipart uploads no running attempt uses (its job failed, was cancelled, requeued or
    re-leased): no orphan parts are left in the store. One older than ``grace`` seconds only, since an upload
    is recorded just after the store creates it."""

    def __init__(self, storage: BucketStorage, store: JobStore, metrics: MasterMetrics, grace: float) -> None:
        self.storage, self.store, self.metrics, self.grace = storage, store, metrics, grace
        self._busy = False
        self._timer = tornado.ioloop.PeriodicCallback(self._tick, max(grace / 2, 0.5) * 1000)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    async def run_once(self) -> int:
        """One pass; the number of uploads aborted."""
        aborted = await self.storage.abort_abandoned(self.store.live_bucket_uploads(), time.time() - self.grace)
        for upload in aborted:
            log.info("aborted abandoned multipart upload of %s (begun %.0f s ago)", upload.key,
                     time.time() - upload.initiated)
        self.store.forget_bucket_uploads(upload.upload_id for upload in aborted)
        self.metrics.uploads_aborted.inc(len(aborted))
        return len(aborted)

    async def _tick(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            await self.run_once()
        except (ObjectStoreError, DatabaseUnavailable) as exc:
            log.warning("could not look for abandoned uploads: %s", exc)
        finally:
            self._busy = False
