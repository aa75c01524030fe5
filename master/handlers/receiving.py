"""What the two ways of receiving a job's output share: upload slots and the atomic commit."""

from __future__ import annotations

import os
from pathlib import Path

import tornado.ioloop

from master.errors import ApiError
from master.handlers.base import BaseHandler
from master.paths import resolve_in_root
from master.store import Job


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

    def release_upload_slot(self) -> None:
        if self._holds_slot:
            self.services.upload_slots.in_use -= 1
            self._holds_slot = False


class ReceivingHandler(UploadSlotHolder, BaseHandler):
    """Base for handlers that stream a job's output to a temp file and commit it in place."""

    def output_destination(self, job: Job) -> Path:
        destination = resolve_in_root(self.config.storage.root, job.output_path, "output_path")
        destination.parent.mkdir(parents=True, exist_ok=True)
        return destination

    async def commit_output(self, job_id: str, temp_path: Path, size: int, digest: bytes) -> Job:
        """fsync the temp file, check the job is still ours, rename it into place and complete the job.

        After the fsync nothing awaits: the check, the rename and the state change happen in one
        IOLoop turn, so no cancel or re-lease can slip in between.
        """
        self.processing_job(job_id)  # a late upload (lease expired, job re-leased or done) stops here
        await fsync_path(temp_path)
        job = self.processing_job(job_id)  # it may have been cancelled or re-leased during the fsync
        os.replace(temp_path, self.output_destination(job))
        job = self.store.complete(job.id, size, digest.hex(), worker_id=job.worker_id)
        self.services.metrics.job_completed(job)
        if job.worker_id is not None:
            self.store.record_worker_outcome(job.worker_id, failed=False, threshold=self.config.jobs.quarantine_after,
                                             quarantine_seconds=self.config.jobs.quarantine_seconds)
        return job


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
        raise ApiError(507, "insufficient_storage", f"cannot store upload ({exc.strerror})") from None


def close_file(file) -> None:
    """Flush and close; a full disk turns into 507."""
    try:
        file.close()
    except OSError as exc:
        raise ApiError(507, "insufficient_storage", f"cannot store upload ({exc.strerror})") from None
