"""Handlers that receive a job's output: an upload slot while the body streams in, the atomic commit."""

from __future__ import annotations

import logging
from pathlib import Path

from converter_common.noclobber import place_new
from master import errors
from master.handlers.base import BaseHandler
from master.intake import fsync_path
from master.paths import resolve_in_root
from master.store import Job

log = logging.getLogger("converter.master")


class UploadSlotHolder:
    """For handlers receiving a file: one of ``server.max_concurrent_uploads`` slots while it streams in."""

    _holds_slot = False

    def take_upload_slot(self) -> None:
        self.services.uploads.take_slot()
        self._holds_slot = True

    def release_upload_slot(self) -> None:
        if self._holds_slot:
            self.services.uploads.release_slot()
            self._holds_slot = False

    def accept_upload(self, directory: Path) -> None:
        """An authenticated upload may send up to ``server.max_upload_size`` bytes, if ``directory`` has the room
        its declared length needs (507 otherwise)."""
        self.accept_body(self.config.server.max_upload_size)
        declared = self.declared_length()
        if declared is not None:
            self.services.uploads.require_room(directory, declared)
        self.request.connection.set_body_timeout(self.config.server.timeout)


class ReceivingHandler(UploadSlotHolder, BaseHandler):
    """Base for handlers that stream a job's output to a temp file and commit it in place."""

    def output_destination(self, job: Job) -> Path:
        destination = resolve_in_root(self.config.storage.root, job.output_path, "output_path")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.storage_error(exc) from None
        return destination

    async def commit_output(self, job_id: str, temp_path: Path, size: int, digest: bytes,
                            upload_id: str | None = None) -> Job:
        """fsync the temp file, check the job is still ours, rename it into place and complete the job (with
        the worker's outcome and the tus upload ``upload_id``, in one transaction).

        After the fsync nothing awaits: the check, the rename and the state change happen in one
        IOLoop turn, so no cancel or re-lease can slip in between.
        """
        self.processing_job(job_id)  # a late upload (lease expired, job re-leased or done) stops here
        await fsync_path(temp_path)
        job = self.processing_job(job_id)  # it may have been cancelled or re-leased during the fsync
        self._place_output(job, temp_path)
        job = self.store.complete_job(job.id, size, digest.hex(), worker_id=job.worker_id, upload_id=upload_id)
        self.services.metrics.job_completed(job)
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
            self.services.metrics.job_failed_or_requeued(failed, errors.OUTPUT_EXISTS.code)
            raise errors.OUTPUT_EXISTS.error(error) from None
        except OSError as exc:
            temp_path.unlink(missing_ok=True)
            raise errors.storage_error(exc) from None


def close_file(file) -> None:
    """Flush and close; a full disk turns into 507."""
    try:
        file.close()
    except OSError as exc:
        raise errors.cannot_store(exc.strerror) from None
