"""What the two ways of receiving a job's output share: upload slots and the atomic commit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tornado.ioloop

from converter_common.noclobber import place_new
from master import errors
from master.errors import ApiError
from master.handlers.base import BaseHandler
from master.paths import free_bytes, resolve_in_root
from master.store import Job

log = logging.getLogger("converter.master")


class UploadSlotHolder:
    """For handlers receiving a file: one of ``server.max_concurrent_uploads`` slots while it streams in."""

    _holds_slot = False

    def take_upload_slot(self) -> None:
        slots = self.services.upload_slots
        if slots.in_use >= self.config.server.max_concurrent_uploads:
            raise ApiError(503, "too_many_uploads", "the master is receiving its maximum of concurrent uploads",
                           headers={"Retry-After": "5"})
        slots.in_use += 1
        self._holds_slot = True

    def accept_upload(self, directory: Path) -> None:
        """An authenticated upload may send up to ``server.max_upload_size`` bytes, if ``directory`` has the room
        its declared length needs (507 otherwise)."""
        self.accept_body(self.config.server.max_upload_size)
        declared = self.declared_length()
        if declared is not None and declared > free_bytes(directory):
            raise ApiError(507, "insufficient_storage", "not enough free space on the master for this upload")
        self.request.connection.set_body_timeout(self.config.server.timeout)

    def release_upload_slot(self) -> None:
        if self._holds_slot:
            self.services.upload_slots.in_use -= 1
            self._holds_slot = False


class ReceivingHandler(UploadSlotHolder, BaseHandler):
    """Base for handlers that stream a job's output to a temp file and commit it in place."""

    def output_destination(self, job: Job) -> Path:
        destination = resolve_in_root(self.config.storage.root, job.output_path, "output_path")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.storage_error(exc) from None
        return destination

    async def commit_output(self, job_id: str, temp_path: Path, size: int, digest: bytes) -> Job:
        """fsync the temp file, check the job is still ours, rename it into place and complete the job.

        After the fsync nothing awaits: the check, the rename and the state change happen in one
        IOLoop turn, so no cancel or re-lease can slip in between.
        """
        self.processing_job(job_id)  # a late upload (lease expired, job re-leased or done) stops here
        await fsync_path(temp_path)
        job = self.processing_job(job_id)  # it may have been cancelled or re-leased during the fsync
        self._place_output(job, temp_path)
        job = self.store.complete(job.id, size, digest.hex(), worker_id=job.worker_id)
        self.services.metrics.job_completed(job)
        if job.worker_id is not None:
            self.store.record_worker_outcome(job.worker_id, failed=False, threshold=self.config.jobs.quarantine_after,
                                             quarantine_seconds=self.config.jobs.quarantine_seconds)
        return job


    def _place_output(self, job: Job, temp_path: Path) -> None:
        """The output's final name, taken only if free: what is there (another job's output, a user's file) stays,
        and the job fails for good, since no later attempt could write there either."""
        try:
            place_new(temp_path, self.output_destination(job))
        except FileExistsError:
            temp_path.unlink(missing_ok=True)
            error = f"output_path {job.output_path!r} already exists; it was not overwritten"
            log.error("job %s: %s", job.id, error)
            failed = self.store.fail(job.id, worker_id=job.worker_id, error=error, retryable=False, retry_delay=0)
            self.services.metrics.job_failed_or_requeued(failed, "output_exists")
            raise errors.conflict("output_exists", error) from None
        except OSError as exc:
            temp_path.unlink(missing_ok=True)
            raise errors.storage_error(exc) from None


async def fsync_path(path: Path) -> None:
    def sync() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    try:
        await tornado.ioloop.IOLoop.current().run_in_executor(None, sync)
    except OSError as exc:
        raise errors.insufficient_storage(exc.strerror) from None


def close_file(file) -> None:
    """Flush and close; a full disk turns into 507."""
    try:
        file.close()
    except OSError as exc:
        raise errors.insufficient_storage(exc.strerror) from None
