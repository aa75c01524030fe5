"""The worker's loop: claim → download → convert → upload → clean up, one testable step at a time.

``Worker`` is built from its parts: the master client, how files move (a storage mode), how to make the
FFmpeg converter (probed once, on first use), and a clock for its waits. ``Worker.from_config`` wires the
production ones; a test injects its own. ``run_once`` is one step of a claim loop: claim a job and take it
to one of the outcomes in ``worker.metrics.OUTCOMES``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from converter_common.profiles import BUILTIN_PROFILES
from converter_common.skip_rules import SourceFacts, keep_source_reason, skip_reason
from converter_common.systemd import Notifier
from worker import ffmpeg, health
from worker.client import MasterClient, SourceHead
from worker.config import WorkerConfig
from worker.conversion import Converter, ConverterFactory, probing_factory
from worker.errors import ApiRejected, Cause, FatalError, JobLost, RetryableError, Shutdown
from worker.metrics import WorkerMetrics, free_bytes
from worker.retry import RetryPolicy
from worker.schedule import Schedule
from worker.skip_check import probe_facts
from worker.storage_modes import SOURCE_HEAD_BYTES, StorageMode, storage_mode

log = logging.getLogger("converter.worker")
# Outside its schedule a worker looks at the clock, and re-registers (so the master sees it online), this often.
SCHEDULE_RECHECK_SECONDS = 30.0


@dataclass
class ActiveJob:
    """A job in progress on this worker: its id, where its files live, and how to stop it."""

    job_id: str
    directory: Path
    abort: threading.Event
    reserved: int = 0  # cache bytes this job may still need
    progress: float = 0.0
    stage: str = "download"
    slot: int = 0  # which claim loop runs it: picks its Vulkan device


class Clock:
    """How the worker waits: on an event with a timeout (claim backoff, heartbeats) and for a delayed call
    (the drain deadline). Real time here; a test may inject a clock of its own."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; True when the event was set."""
        return event.wait(seconds)

    def now(self) -> dt.datetime:
        """Local wall-clock time, what ``worker.schedule`` windows are written in."""
        return dt.datetime.now()

    def call_later(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        timer.start()


class Worker:
    def __init__(self, config: WorkerConfig, client: MasterClient, *, storage: StorageMode,
                 converter_factory: ConverterFactory, metrics: WorkerMetrics | None = None,
                 clock: Clock | None = None, notifier: Notifier | None = None):
        self.config = config
        self.client = client
        self.storage = storage
        self.metrics = metrics or WorkerMetrics(CollectorRegistry())
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier()
        self.cache = config.storage.cache_path
        self._converter_factory = converter_factory
        self._converter: Converter | None = None
        self._converter_lock = threading.Lock()
        self._stopping = threading.Event()
        self._active: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._idle_backoff = RetryPolicy(attempts=1, base_delay=1.0, factor=2.0, cap=30.0)
        self.schedule = Schedule.parse(config.worker.schedule)
        self._schedule_reported: tuple[bool, dt.datetime] | None = None  # (open, when) last told the master
        self._schedule_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: WorkerConfig, registry: CollectorRegistry | None = None) -> "Worker":
        """The production worker: metrics on ``registry``, a client of the configured master, the configured
        storage mode, and the configured FFmpeg, probed at the first registration."""
        retry = RetryPolicy(config.retry.attempts, config.retry.base_delay, config.retry.factor, config.retry.cap)
        metrics = WorkerMetrics(registry or CollectorRegistry())
        metrics.watch_cache(config.storage.cache_path)
        metrics.prepare_conversion_series(list(BUILTIN_PROFILES), ["cpu", "vulkan"])
        client = MasterClient(config.master.url, config.worker.id, retry=retry,
                              chunk_size=config.storage.chunk_size,
                              download_timeout=config.storage.download_timeout,
                              upload_timeout=config.storage.upload_timeout,
                              progress_interval=config.worker.progress_interval, metrics=metrics,
                              download_limit=config.transfer.download_limit,
                              upload_limit=config.transfer.upload_limit,
                              direct_io=config.storage.direct_io, token=config.master.token(),
                              upload_window=config.retry.upload_window)
        return cls(config, client, storage=storage_mode(config, client),
                   converter_factory=probing_factory(config.ffmpeg, metrics), metrics=metrics)

    def converter(self) -> Converter:
        """The worker's Converter, made on first use (at registration) and kept for the process's life."""
        with self._converter_lock:
            if self._converter is None:
                self._converter = self._converter_factory(self._stopping)
            return self._converter

    # -- lifecycle ------------------------------------------------------------------------------

    def register(self) -> dict[str, Any]:
        capabilities = self.converter().capabilities()  # probed once, at the first registration
        schedule = None
        if self.schedule.windows:  # only then is the clock asked the time of day
            now = self.clock.now()
            schedule = self.schedule.report(now)
            with self._schedule_lock:
                self._schedule_reported = (schedule["open"], now)
        return self.client.register(capabilities, self.slot_count(), socket.gethostname(), schedule)

    def slot_count(self) -> int:
        """``worker.concurrency``, or for ``auto`` what the probed devices and the cores allow."""
        configured = self.config.worker.concurrency
        return configured if isinstance(configured, int) else self.converter().auto_concurrency()

    def run(self) -> None:
        """Register, then run ``concurrency`` claim loops until ``stop()``; returns when all have ended."""
        self.cache.mkdir(parents=True, exist_ok=True)
        self.remove_stale_job_dirs()
        self._retry_until_stopped(self.register, "register with the master")
        slots = [threading.Thread(target=self._slot_loop, args=(i,), name=f"slot-{i}") for i in
                 range(self.slot_count())]
        for slot in slots:
            slot.start()
        self.notifier.ready(self.status_line())
        self._supervise(slots)

    def _supervise(self, slots: list[threading.Thread]) -> None:
        """The main thread pings systemd's watchdog and refreshes STATUS while the slots run."""
        interval = self.notifier.watchdog_interval() or 5.0
        while alive := [slot for slot in slots if slot.is_alive()]:
            alive[0].join(timeout=interval)
            self.notifier.watchdog()
            self.notifier.status(self.status_line())

    def status_line(self) -> str:
        with self._lock:
            jobs = [f"{job.job_id} {job.stage} {job.progress:.0f}%" for job in self._active.values()]
        return ("stopping; " if self.stopping else "") + ("; ".join(jobs) if jobs else "idle")

    def remove_stale_job_dirs(self) -> None:
        """Job dirs left by a previous run of this worker (killed): their jobs went back to the queue."""
        for stale in self.cache.glob("job_*"):
            log.info("removing %s left by a previous run", stale)
            shutil.rmtree(stale, ignore_errors=True)

    def stop(self) -> None:
        """Stop claiming; running jobs get ``drain_timeout`` to finish, then are aborted and given back."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.notifier.stopping()
        drain = self.config.worker.drain_timeout
        if drain > 0:
            log.info("draining: running jobs have %.0f s to finish", drain)
            self.clock.call_later(drain, self._abort_all)
        else:
            self._abort_all()

    def _abort_all(self) -> None:
        with self._lock:
            for job in self._active.values():
                job.abort.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _slot_loop(self, slot: int = 0) -> None:
        while not self.stopping:
            self._retry_until_stopped(lambda: self.run_once(slot), "claim a job")

    def _retry_until_stopped(self, step, what: str) -> None:
        failures = 0
        while not self.stopping:
            try:
                step()
                return
            except (RetryableError, ApiRejected) as exc:  # master away, or refusing us (bad token): keep trying
                failures += 1
                delay = self._idle_backoff.delay(failures)
                log.warning("cannot %s: %s (next try in %.0f s)", what, exc, delay)
                self.clock.wait(self._stopping, delay)

    # -- one step -------------------------------------------------------------------------------

    def run_once(self, slot: int = 0) -> bool:
        """Claim one job and process it to the end; False when no job came within the claim wait, or when the
        worker is outside its schedule (it then waits for the next window, at most ``SCHEDULE_RECHECK_SECONDS``)."""
        if not self._within_schedule():
            return False
        room = self._cache_room() if self.storage.needs_cache else None
        job = self.client.claim(self.config.worker.claim_wait, cache_free_bytes=room)
        if job is None:
            return False
        self.process(job, slot)
        return True

    def _within_schedule(self) -> bool:
        if not self.schedule.windows:
            return True
        now = self.clock.now()
        is_open = self.schedule.is_open(now)
        self.metrics.schedule_open.set(1 if is_open else 0)
        self._report_schedule(is_open, now)
        if is_open:
            return True
        change = self.schedule.next_change(now)
        wait = SCHEDULE_RECHECK_SECONDS if change is None else (change - now).total_seconds()
        self.clock.wait(self._stopping, min(max(wait, 0.05), SCHEDULE_RECHECK_SECONDS))
        return False

    def _report_schedule(self, is_open: bool, now: dt.datetime) -> None:
        """Tell the master (a registration) when the worker enters or leaves its windows, and every
        ``SCHEDULE_RECHECK_SECONDS`` outside them, since it then sends no claim the master would see it by."""
        with self._schedule_lock:
            last = self._schedule_reported
            if last is not None and last[0] == is_open and (is_open or now - last[1] < dt.timedelta(
                    seconds=SCHEDULE_RECHECK_SECONDS)):
                return
            self._schedule_reported = (is_open, now)
        if last is not None and last[0] != is_open:
            log.info("schedule: %s", "inside a window: claiming jobs" if is_open else "outside the windows: "
                     "claiming nothing until the next one")
        self.register()

    def process(self, job: dict[str, Any], slot: int = 0) -> None:
        active = ActiveJob(job["id"], self.cache / f"job_{job['id']}", threading.Event(),
                           reserved=2 * int(job.get("source_size") or 0), slot=slot)
        with self._lock:
            self._active[active.job_id] = active
        if self.stopping:
            active.abort.set()  # claimed while stopping: hand it straight back, even when draining
        heartbeat = threading.Thread(target=self._heartbeat_loop, args=(active,), daemon=True)
        heartbeat.start()
        self.metrics.jobs_in_progress.inc()
        outcome = "completed"
        try:
            outcome = self._convert_job(job, active) or outcome
        except Shutdown as exc:
            outcome = "released" if self._give_back(active, exc) else "lost"
        except JobLost as exc:
            outcome = "lost"
            log.warning("job %s is no longer ours (%s); dropping it", active.job_id, exc)
        except FatalError as exc:
            outcome = "failed"
            log.error("job %s failed (cause: %s): %s", active.job_id, exc.cause.value, exc)
            self.client.fail(active.job_id, str(exc), retryable=False, cause=exc.cause)
        except (RetryableError, OSError) as exc:  # OSError: the cache disk (full, unwritable), FFmpeg missing
            cause = exc.cause if isinstance(exc, RetryableError) else Cause.WORKER
            log.error("job %s attempt failed (cause: %s): %s", active.job_id, cause.value, exc)
            outcome = self._report_retryable(active, str(exc), cause)
        except Exception as exc:
            log.exception("job %s: unexpected error", active.job_id)
            outcome = self._report_retryable(active, f"worker error: {exc.__class__.__name__}: {exc}", Cause.WORKER)
        finally:
            self.metrics.jobs_in_progress.dec()
            self.metrics.jobs_finished.labels(outcome).inc()
            active.abort.set()
            heartbeat.join()
            shutil.rmtree(active.directory, ignore_errors=True)
            self.storage.discard(job)
            with self._lock:
                self._active.pop(active.job_id, None)

    def _convert_job(self, job: dict[str, Any], active: ActiveJob) -> str | None:
        profile = ffmpeg.job_profile(job)  # a configured profile comes whole with the claim
        active.directory.mkdir(parents=True, exist_ok=True)
        if profile.check_only:  # health-check: decode the source, report what FFmpeg found, write nothing
            return self._health_check(job, active)
        log.info("job %s: %s -> %s (%s)", active.job_id, job["source_path"], job["output_path"], profile.name)
        source = self._source_judged(job, profile, active)
        if source is None:
            return "skipped"
        output = self.storage.output(job, active.directory)
        active.stage = "convert"
        converter = self.converter()
        result = converter.convert(profile, source, output, active.abort, label=f"job {active.job_id}",
                                   on_progress=lambda pct: setattr(active, "progress", pct), slot=active.slot)
        log.info("job %s: converted %.1f s of media in %.1f s (%s, %s, speed %.2fx)%s%s", active.job_id,
                 result.media_seconds, result.seconds, result.accel, result.encoder, result.speed,
                 f"; {result.hdr}" if result.hdr else "",
                 f" after a Vulkan failure: {result.fallback}" if result.fallback else "")
        self._announce_changes(converter)
        self._record_conversion(active, result.job_fields())
        active.stage = "upload"
        if self._kept_source(job, profile, output, source, active):
            return None
        size = self.storage.deliver(job, output, active.abort)
        log.info("job %s: completed, %d bytes delivered", active.job_id, size)
        return None

    def _source_facts(self, job: dict[str, Any], path: Path) -> SourceFacts | None:
        return probe_facts(self.config.ffmpeg.ffprobe, path, int(job.get("source_size") or 0))

    def _source_judged(self, job: dict[str, Any], profile, active: ActiveJob) -> Path | None:
        """The job's source, ready to convert; None when the profile's skip rule skipped the job (the master told).

        With the rule on, a transfer worker's download starts with the source's first ``SOURCE_HEAD_BYTES``
        (``SourceHead``: the same GETs, retries and counts as the rest), which ffprobe reads: a skip stops the
        download there. When they do not tell (an MP4 indexed at its end), or the source is no larger, or it lies
        on a shared mount, the rule is judged on the whole source, before any conversion."""
        if profile.skip_bpp <= 0:
            return self.storage.source(job, active.directory, active.abort)
        judged: list[str | None] = []

        def judge(head: Path) -> bool:
            facts = self._source_facts(job, head)
            if facts is not None:  # the head told: the rule's answer, whichever it is
                judged.append(skip_reason(profile, facts))
            return bool(judged and judged[0])

        source = self.storage.source(job, active.directory, active.abort, head=SourceHead(SOURCE_HEAD_BYTES, judge))
        reason = judged[0] if judged else skip_reason(profile, self._source_facts(job, source))
        if reason is None:
            return source
        self.client.skip(job["id"], reason)
        log.info("job %s: skipped: %s", job["id"], reason)
        return None

    def _announce_changes(self, converter) -> None:
        """Re-register when the converter's capabilities just changed (Vulkan disabled), so the master knows."""
        if converter.take_announcement():
            try:
                self.register()
            except (RetryableError, ApiRejected) as exc:
                log.warning("could not re-send capabilities (%s); the next registration will", exc)

    def _kept_source(self, job: dict[str, Any], profile, output: Path, source: Path, active: ActiveJob) -> bool:
        """``discard_larger``: an output larger than the source is dropped and the source becomes the output (the
        storage mode's way: the master copies it, or the worker sends its copy to the bucket); False (deliver the
        output) when the output is not larger or the profile keeps larger outputs."""
        reason = keep_source_reason(profile, int(job.get("source_size") or 0), output.stat().st_size)
        if reason is None:
            return False
        self.storage.keep_source(job, source, reason, active.abort)
        log.info("job %s: completed, source kept: %s", job["id"], reason)
        return True

    def _record_conversion(self, active: ActiveJob, fields: dict[str, Any]) -> None:
        """Tell the master how the conversion went (time, accel, speed); the job shows it."""
        try:
            self.client.heartbeat(active.job_id, round(active.progress, 1), conversion=fields)
        except RetryableError as exc:
            log.warning("job %s: could not record the conversion figures (%s)", active.job_id, exc)

    def _health_check(self, job: dict[str, Any], active: ActiveJob) -> None:
        """Profile health-check (``worker.health``): the source fetched and decoded whole, the result reported;
        the job completes healthy or not (a corrupt source is a result, never retried). No output, no upload."""
        log.info("job %s: health check of %s", active.job_id, job["source_path"])
        source = self.storage.source(job, active.directory, active.abort)
        active.stage = "check"
        converter = self.converter()
        result = health.check(converter, source, active.abort, label=f"job {active.job_id}", slot=active.slot,
                              on_progress=lambda pct: setattr(active, "progress", pct))
        self._announce_changes(converter)
        self._record_conversion(active, result.job_fields())
        active.stage = "report"
        self.client.health_result(active.job_id, result.to_dict(), active.abort)
        log.info("job %s: health check done in %.1f s (%s decode): %s", active.job_id, result.seconds,
                 result.decoder, "healthy" if result.healthy else f"{result.error_count} error(s), first: "
                 f"{result.errors[0]}")

    def _cache_room(self) -> int:
        """Free cache bytes not already promised to jobs in progress (each may need up to twice its source)."""
        with self._lock:
            promised = sum(job.reserved for job in self._active.values())
        return max(0, free_bytes(self.cache) - promised)

    def _report_retryable(self, active: ActiveJob, error: str, cause: Cause) -> str:
        job = self.client.fail(active.job_id, error, retryable=True, cause=cause)
        return "retried" if job["status"] == "pending" else "failed"

    def _give_back(self, active: ActiveJob, exc: Exception) -> bool:
        """Release an interrupted job to the master; False when it was not ours any more or the master is away."""
        if not self.stopping:
            log.warning("job %s aborted: %s", active.job_id, exc)  # the lease was lost mid-job
            return False
        try:
            self.client.release(active.job_id, "worker shutting down")
        except (RetryableError, FatalError) as release_error:
            log.warning("could not give job %s back (%s); its lease will expire", active.job_id, release_error)
            return False
        log.info("job %s given back to the master", active.job_id)
        return True

    def _heartbeat_loop(self, active: ActiveJob) -> None:
        interval = self.config.worker.heartbeat_interval
        while not self.clock.wait(active.abort, interval):
            try:
                self.client.heartbeat(active.job_id, round(active.progress, 1))
            except JobLost as exc:
                log.warning("job %s: heartbeat refused (%s); aborting it", active.job_id, exc)
                active.abort.set()
            except RetryableError as exc:
                log.warning("job %s: heartbeat failed (%s); will try again", active.job_id, exc)
