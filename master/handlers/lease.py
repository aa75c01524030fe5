"""/api/worker/{heartbeat,fail,release}?job_id=: what the lease holder reports about its job."""

from __future__ import annotations

import logging

from converter_common.protocol import CAUSE_WORKER, FAILURE_CAUSES
from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler, check_worker_id, is_number


log = logging.getLogger("converter.master")
CONVERSION_FIELDS = {"conversion_seconds", "accel", "speed", "vulkan_fallback"}


class _LeaseHandler(BaseHandler):
    access = {"POST": Access.WORKER}

    def lease_request(self) -> tuple[str, str, dict]:
        job_id = self.job_id_argument()
        body = self.json_body()
        return job_id, check_worker_id(body.get("worker_id")), body


class HeartbeatHandler(_LeaseHandler):
    def post(self) -> None:
        job_id, worker_id, body = self.lease_request()
        progress = body.get("progress")
        if progress is not None and not is_number(progress, 0, 100):
            raise errors.INVALID_FIELD.error("progress must be a number 0..100")
        job = self.store.heartbeat(job_id, worker_id=worker_id, progress=progress,
                                   lease_seconds=self.config.jobs.lease_seconds,
                                   conversion=conversion_fields(body.get("conversion")))
        self.write_json(job.to_dict())


def conversion_fields(value: object) -> dict | None:
    """The conversion figures a worker reports once FFmpeg is done: checked field by field."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - CONVERSION_FIELDS:
        raise errors.INVALID_FIELD.error(f"conversion must be an object with {sorted(CONVERSION_FIELDS)}")
    for name in ("conversion_seconds", "speed"):
        number = value.get(name)
        if number is not None and not is_number(number, 0, 1e12):
            raise errors.INVALID_FIELD.error(f"conversion.{name} must be a number 0..1e12")
    if value.get("accel") not in (None, "cpu", "vulkan"):
        raise errors.INVALID_FIELD.error("conversion.accel must be cpu or vulkan")
    fallback = value.get("vulkan_fallback")
    if fallback is not None and not isinstance(fallback, str):
        raise errors.INVALID_FIELD.error("conversion.vulkan_fallback must be a string")
    return {**value, "vulkan_fallback": fallback[:500] if fallback else None}


class FailHandler(_LeaseHandler):
    def post(self) -> None:
        job_id, worker_id, body = self.lease_request()
        error = body.get("error")
        retryable = body.get("retryable", True)
        if not isinstance(error, str) or not error:
            raise errors.INVALID_FIELD.error("error must be a non-empty string")
        if not isinstance(retryable, bool):
            raise errors.INVALID_FIELD.error("retryable must be true or false")
        cause = body.get("cause", CAUSE_WORKER)
        if cause not in FAILURE_CAUSES:
            raise errors.INVALID_FIELD.error(f"cause must be one of {', '.join(FAILURE_CAUSES)}")
        job = self.store.fail(job_id, worker_id=worker_id, error=error[:2000], retryable=retryable,
                              retry_delay=self.config.jobs.retry_delay)
        if cause == CAUSE_WORKER:  # a bad source says nothing about the worker: only its own failures count
            self._count_worker_failure(worker_id, job)
        self.services.metrics.job_failed_or_requeued(job, "retryable_failure")
        self.services.wakeup.send()
        self.write_json(job.to_dict())

    def _count_worker_failure(self, worker_id: str, job) -> None:
        worker = self.store.record_worker_outcome(worker_id, failed=True, threshold=self.config.jobs.quarantine_after,
                                                  quarantine_seconds=self.config.jobs.quarantine_seconds)
        if worker is not None and worker.quarantined_until > job.updated_at:
            log.warning("worker %s quarantined after %d consecutive failures", worker_id,
                        worker.consecutive_failures)


class SkipHandler(_LeaseHandler):
    """The job's source already matches its profile (the profile's skip rule): the job ends skipped."""

    def post(self) -> None:
        job_id, worker_id, body = self.lease_request()
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason:
            raise errors.INVALID_FIELD.error("reason must be a non-empty string")
        job = self.store.skip(job_id, worker_id=worker_id, reason=reason[:2000])
        self.store.record_worker_outcome(worker_id, failed=False, threshold=self.config.jobs.quarantine_after,
                                         quarantine_seconds=self.config.jobs.quarantine_seconds)
        self.write_json(job.to_dict())


class ReleaseHandler(_LeaseHandler):
    def post(self) -> None:
        job_id, worker_id, body = self.lease_request()
        reason = body.get("reason", "released by worker")
        if not isinstance(reason, str):
            raise errors.INVALID_FIELD.error("reason must be a string")
        job = self.store.release(job_id, worker_id=worker_id, reason=reason[:2000])
        self.services.metrics.job_failed_or_requeued(job, "released")
        self.services.wakeup.send()
        self.write_json(job.to_dict())
