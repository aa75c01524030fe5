"""/api/jobs/<id>/output: a completed job's converted file, for users.

Served like the worker's source download (``file_sending.py``): ``ETag`` and ``Repr-Digest`` from the
SHA-256 the upload was checked against, one ``Range`` with ``If-Range``, ``Content-Disposition``
with the file's name. HEAD answers the same headers without the body. With the bucket backend the
object streams through the master, or, with ``?presigned=1``, the answer is a 307 to a presigned GET
(``Repr-Digest`` on the redirect); converterctl asks for that, ``curl -O`` gets the bytes.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import tornado.ioloop

from converter_common.digest import file_sha256, repr_digest
from master import errors
from master.auth import Access
from master.handlers.base import check_job_id
from master.handlers.file_sending import FileSendingHandler
from master.paths import resolve_in_root
from master.states import JobStatus
from master.store import Job


class JobOutputHandler(FileSendingHandler):
    access = {"GET": Access.READ, "HEAD": Access.READ}

    async def get(self, job_id: str) -> None:
        await self._serve(job_id, send_body=True)

    async def head(self, job_id: str) -> None:
        await self._serve(job_id, send_body=False)

    async def _serve(self, job_id: str, send_body: bool) -> None:
        job = self.store.get_job(check_job_id(job_id))
        if job.status is not JobStatus.COMPLETED:
            raise errors.INVALID_JOB_STATE.error(f"job {job.id!r} is {job.status.value}, must be completed")
        if not job.output_path:
            raise errors.OUTPUT_NOT_FOUND.error(f"job {job.id!r} is a health check: it has no output (see its health)")
        if self.services.storage.in_bucket and self.get_query_argument("presigned", "") in ("1", "true"):
            self._redirect_to_store(job)
            return
        if self.services.storage.in_bucket:
            await self.send_object(job.output_path, digest=bytes.fromhex(job.output_sha256 or ""),
                                   missing=errors.OUTPUT_NOT_FOUND, what=f"output of job {job.id!r}",
                                   send_body=send_body)
            return
        path = resolve_in_root(self.config.storage.root, job.output_path, "output_path")
        await self.send_file(path, missing=errors.OUTPUT_NOT_FOUND, what=f"output of job {job.id!r}",
                             digest_of=lambda path, stat: self._current_digest(job, path, stat), send_body=send_body)

    def _redirect_to_store(self, job: Job) -> None:
        """``?presigned=1`` with the bucket backend: 307 to a presigned GET of the object, so the bytes skip the
        master; the redirect carries the ``Repr-Digest`` to verify them against (the store does not send it)."""
        storage = self.services.storage
        url = storage.presigned_get(job.output_path, filename=PurePosixPath(job.output_path).name)
        self.set_header("Repr-Digest", repr_digest(bytes.fromhex(job.output_sha256 or "")))
        self.set_header("Location", url)
        self.set_header("Cache-Control", "no-store")
        self.set_status(307)
        self.finish()

    async def _current_digest(self, job: Job, path: Path, stat: os.stat_result) -> bytes:
        """The digest stored at completion; rehashed (in a thread) if the file was changed after it."""
        changed = stat.st_size != job.output_size or stat.st_mtime > (job.finished_at or 0) + 1
        if job.output_sha256 and not changed:
            return bytes.fromhex(job.output_sha256)
        return await tornado.ioloop.IOLoop.current().run_in_executor(None, file_sha256, path)
