"""Handlers that receive a job's output: an upload slot while the body streams in, the atomic commit."""

from __future__ import annotations

import logging
from pathlib import Path

from master import errors
from master.database import DatabaseUnavailable
from master.handlers.base import BaseHandler
from master.intake import fsync_path
from master.states import JobStatus
from master.store import Job, StoreError

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

    @staticmethod
    def require_output(job: Job) -> Job:
        """409 for a job that writes no output (a health check): nothing is ever stored for it."""
        if not job.output_path:
            raise errors.INVALID_JOB_STATE.error(f"job {job.id!r} is a health check: it has no output to receive")
        return job

    def output_staging_dir(self, job: Job) -> Path:
        """Where the job's output is received: beside its final name (so the rename is atomic), or, with the
        bucket backend, the master's staging folder."""
        self.require_output(job)
        try:
            return self.services.storage.staging_dir_for(job.output_path)
        except OSError as exc:
            raise errors.storage_error(exc) from None

    async def commit_output(self, job_id: str, temp_path: Path, size: int, digest: bytes,
                            upload_id: str | None = None, kept_source: str | None = None) -> Job:
        """fsync the temp file, check the job is still ours, put the file at the output's name and complete the
        job (with the worker's outcome and the tus upload ``upload_id``, in one transaction).

        Local files: after the fsync nothing awaits, so the check, the rename and the state change happen in
        one IOLoop turn and no cancel or re-lease can slip in between. Bucket: sending the file awaits; if the
        job was taken from this worker meanwhile, the object it just created is deleted again.
        """
        self.require_output(self.processing_job(job_id))  # a late upload (lease expired, re-leased, done) stops here
        await fsync_path(temp_path)
        job = self.processing_job(job_id)  # it may have been cancelled or re-leased during the fsync
        await self._place_output(job, temp_path, digest)
        try:
            self.processing_job(job_id)
            job = self.store.complete_job(job.id, size, digest.hex(), worker_id=job.worker_id, upload_id=upload_id,
                                          kept_source=kept_source)
        except BaseException:
            if self.services.storage.in_bucket:
                await self.withdraw_output(job)
            raise
        self.services.metrics.job_completed(job)
        return job

    async def _place_output(self, job: Job, temp_path: Path, digest: bytes) -> None:
        """The output's final name, taken only if free: what is there (another job's output, a user's file) stays,
        and the job fails for good, since no later attempt could write there either. The one exception is this
        very attempt's output with these bytes (``already_stored``)."""
        try:
            await self.services.storage.place(temp_path, job.output_path, digest, output_writer(job))
        except FileExistsError:
            temp_path.unlink(missing_ok=True)
            if not await self.already_stored(job, digest):
                self.fail_for_existing_output(job)
        except OSError as exc:
            temp_path.unlink(missing_ok=True)
            raise errors.storage_error(exc) from None
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise

    async def already_stored(self, job: Job, digest: bytes) -> bool:
        """Whether the output is already stored by this attempt, with these bytes: a master stored it and died
        before it recorded the job completed (another master, or it restarted, now finishes the job with it)."""
        if not await self.services.storage.written_by(job.output_path, output_writer(job), digest):
            return False
        log_completing_with_stored_output(job)
        return True

    async def withdraw_output(self, job: Job) -> None:
        """This attempt stored the output in the bucket but did not complete the job (awaits let things happen):
        the object goes only if the attempt lost the job (cancelled, re-leased); it stays when the job was
        completed with it (a second call of the same attempt recorded it first) or is still this attempt's (the
        database failed: the attempt's retry completes the job with it, ``already_stored``)."""
        try:
            now = self.store.get_job(job.id)
        except (StoreError, DatabaseUnavailable):
            return
        if now.attempts != job.attempts or now.status not in (JobStatus.PROCESSING, JobStatus.COMPLETED):
            await self.services.storage.remove(job.output_path)

    def fail_for_existing_output(self, job: Job) -> None:
        error = f"output_path {job.output_path!r} already exists; it was not overwritten"
        log.error("job %s: %s", job.id, error)
        failed = self.store.fail(job.id, worker_id=job.worker_id, error=error, retryable=False, retry_delay=0)
        self.services.metrics.job_failed_or_requeued(failed, errors.OUTPUT_EXISTS.code)
        raise errors.OUTPUT_EXISTS.error(error) from None


def log_completing_with_stored_output(job: Job) -> None:
    log.warning("job %s: its output is already stored by this attempt (a master stopped, or an earlier call was "
                "cut, before recording the job completed); completing the job with it", job.id)


def output_writer(job: Job) -> str:
    """The job attempt an output is stored by, recorded with the object (``storage.WRITER_METADATA``)."""
    return f"{job.id}/{job.attempts}"


def close_file(file) -> None:
    """Flush and close; a full disk turns into 507."""
    try:
        file.close()
    except OSError as exc:
        raise errors.cannot_store(exc.strerror) from None
