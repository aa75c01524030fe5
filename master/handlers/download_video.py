"""/api/worker/download-video?job_id=: stream a processing job's source file.

Sends ``Repr-Digest`` (RFC 9530) and a strong ``ETag`` from the SHA-256 computed at submission,
and honours a single ``Range`` (with ``If-Range``) so a worker can resume a cut download.
"""

from __future__ import annotations

import os
from pathlib import Path

import tornado.ioloop

from converter_common.digest import file_sha256
from master.auth import Access
from master import errors
from master.handlers.file_sending import FileSendingHandler
from master.paths import resolve_in_root
from master.store import Job


class DownloadVideoHandler(FileSendingHandler):
    access = {"GET": Access.WORKER}

    async def get(self) -> None:
        job = self.processing_job(self.job_id_argument())
        if self.services.storage.in_bucket:
            await self.send_object(job.source_path, digest=bytes.fromhex(job.source_sha256),
                                   missing=errors.SOURCE_MISSING, what=f"source of job {job.id!r}")
            return
        path = resolve_in_root(self.config.storage.root, job.source_path, "source_path")
        await self.send_file(path, missing=errors.SOURCE_MISSING, what=f"source of job {job.id!r}",
                             digest_of=lambda path, stat: self._current_digest(job, path, stat))

    async def _current_digest(self, job: Job, path: Path, stat: os.stat_result) -> bytes:
        """The digest stored with the job, recomputed (in a thread) only if the file changed since."""
        if (stat.st_size, stat.st_mtime_ns) == (job.source_size, job.source_mtime_ns):
            return bytes.fromhex(job.source_sha256)
        digest = await tornado.ioloop.IOLoop.current().run_in_executor(None, file_sha256, path)
        self.store.update_source_digest(job.id, size=stat.st_size, sha256=digest.hex(), mtime_ns=stat.st_mtime_ns)
        return digest
