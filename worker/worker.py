"""The worker's loop: claim → download → convert → upload → clean up, one testable step at a time."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from worker import ffmpeg
from worker.client import MasterClient
from worker.config import WorkerConfig
from worker.errors import FatalError, JobLost, RetryableError, Shutdown
from worker.retry import RetryPolicy

log = logging.getLogger("converter.worker")


@dataclass
class ActiveJob:
    """A job in progress on this worker: its id, where its files live, and how to stop it."""

    job_id: str
    directory: Path
    abort: threading.Event
    progress: float = 0.0


class Worker:
    def __init__(self, config: WorkerConfig, client: MasterClient):
        self.config = config
        self.client = client
        self.cache = config.storage.cache_path
        self._stopping = threading.Event()
        self._active: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._idle_backoff = RetryPolicy(attempts=1, base_delay=1.0, factor=2.0, cap=30.0)

    @classmethod
    def from_config(cls, config: WorkerConfig) -> "Worker":
        retry = RetryPolicy(config.retry.attempts, config.retry.base_delay, config.retry.factor, config.retry.cap)
        client = MasterClient(config.master.url, config.worker.id, retry=retry,
                              chunk_size=config.storage.chunk_size,
                              download_timeout=config.storage.download_timeout,
                              upload_timeout=config.storage.upload_timeout,
                              progress_interval=config.worker.progress_interval)
        return cls(config, client)

    # -- lifecycle ------------------------------------------------------------------------------

    def register(self) -> dict[str, Any]:
        capabilities = {"ffmpeg": self.config.ffmpeg.binary, "accel": ["cpu"]}
        return self.client.register(capabilities, self.config.worker.concurrency, socket.gethostname())

    def run(self) -> None:
        """Register, then run ``concurrency`` claim loops until ``stop()``; returns when all have ended."""
        self.cache.mkdir(parents=True, exist_ok=True)
        self._retry_until_stopped(self.register, "register with the master")
        slots = [threading.Thread(target=self._slot_loop, name=f"slot-{i}") for i in
                 range(self.config.worker.concurrency)]
        for slot in slots:
            slot.start()
        for slot in slots:
            slot.join()

    def stop(self) -> None:
        """Stop claiming; abort running jobs, which are given back to the master."""
        self._stopping.set()
        with self._lock:
            for job in self._active.values():
                job.abort.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _slot_loop(self) -> None:
        while not self.stopping:
            self._retry_until_stopped(self.run_once, "claim a job")

    def _retry_until_stopped(self, step, what: str) -> None:
        failures = 0
        while not self.stopping:
            try:
                step()
                return
            except RetryableError as exc:
                failures += 1
                delay = self._idle_backoff.delay(failures)
                log.warning("cannot %s: %s (next try in %.0f s)", what, exc, delay)
                self._stopping.wait(delay)

    # -- one step -------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim one job and process it to the end; False when no job came within the claim wait."""
        job = self.client.claim(self.config.worker.claim_wait)
        if job is None:
            return False
        self.process(job)
        return True

    def process(self, job: dict[str, Any]) -> None:
        active = ActiveJob(job["id"], self.cache / f"job_{job['id']}", threading.Event())
        with self._lock:
            self._active[active.job_id] = active
        if self.stopping:
            active.abort.set()
        heartbeat = threading.Thread(target=self._heartbeat_loop, args=(active,), daemon=True)
        heartbeat.start()
        try:
            self._convert_job(job, active)
        except Shutdown as exc:
            self._give_back(active, exc)
        except JobLost as exc:
            log.warning("job %s is no longer ours (%s); dropping it", active.job_id, exc)
        except FatalError as exc:
            log.error("job %s failed: %s", active.job_id, exc)
            self.client.fail(active.job_id, str(exc), retryable=False)
        except RetryableError as exc:
            log.error("job %s attempt failed: %s", active.job_id, exc)
            self.client.fail(active.job_id, str(exc), retryable=True)
        finally:
            active.abort.set()
            heartbeat.join()
            shutil.rmtree(active.directory, ignore_errors=True)
            with self._lock:
                self._active.pop(active.job_id, None)

    def _convert_job(self, job: dict[str, Any], active: ActiveJob) -> None:
        profile = ffmpeg.profile_named(job["profile"])
        active.directory.mkdir(parents=True, exist_ok=True)
        source = active.directory / f"source{PurePosixPath(job['source_path']).suffix.lower()}"
        output = active.directory / f"output{PurePosixPath(job['output_path']).suffix.lower()}"
        log.info("job %s: %s -> %s (%s)", active.job_id, job["source_path"], job["output_path"], profile.name)
        self.client.download_source_video(active.job_id, source, active.abort)
        duration = ffmpeg.probe(self.config.ffmpeg.ffprobe, source).duration
        command = ffmpeg.build_command(self.config.ffmpeg.binary, profile, source, output)
        seconds = ffmpeg.run(command, duration=duration, timeout=self.config.ffmpeg.timeout, cancel=active.abort,
                             on_progress=lambda pct: setattr(active, "progress", pct))
        log.info("job %s: converted %.1f s of media in %.1f s", active.job_id, duration, seconds)
        size = self.client.upload_converted_video(active.job_id, output, active.abort)
        log.info("job %s: completed, %d bytes uploaded", active.job_id, size)

    def _give_back(self, active: ActiveJob, exc: Exception) -> None:
        if not self.stopping:
            log.warning("job %s aborted: %s", active.job_id, exc)  # the lease was lost mid-job
            return
        try:
            self.client.release(active.job_id, "worker shutting down")
            log.info("job %s given back to the master", active.job_id)
        except (RetryableError, FatalError) as release_error:
            log.warning("could not give job %s back (%s); its lease will expire", active.job_id, release_error)

    def _heartbeat_loop(self, active: ActiveJob) -> None:
        interval = self.config.worker.heartbeat_interval
        while not active.abort.wait(interval):
            try:
                self.client.heartbeat(active.job_id, round(active.progress, 1))
            except JobLost as exc:
                log.warning("job %s: heartbeat refused (%s); aborting it", active.job_id, exc)
                active.abort.set()
            except RetryableError as exc:
                log.warning("job %s: heartbeat failed (%s); will try again", active.job_id, exc)
