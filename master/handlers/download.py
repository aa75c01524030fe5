"""/api/worker/download-video?job_id=: stream a processing job's source file.

Sends ``Repr-Digest`` (RFC 9530) and a strong ``ETag`` from the SHA-256 computed at submission,
and honours a single ``Range`` (with ``If-Range``) so a worker can resume a cut download.
"""

from __future__ import annotations

import os

import tornado.ioloop
import tornado.iostream

from converter_common.digest import file_sha256, repr_digest
from master import errors
from master.auth import Access
from master.content import RangeNotSatisfiable, attachment_disposition, content_type_for, parse_byte_range
from master.errors import ApiError
from master.handlers.base import BaseHandler
from master.paths import resolve_in_root
from master.store import Job


class DownloadVideoHandler(BaseHandler):
    access = {"GET": Access.WORKER}

    async def get(self) -> None:
        job = self.processing_job(self.job_id_argument())
        path = resolve_in_root(self.config.storage.root, job.source_path, "source_path")
        try:
            source = open(path, "rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError):
            raise errors.not_found("source_not_found", f"the source of job {job.id!r} is missing") from None
        with source:
            stat = os.fstat(source.fileno())
            digest = await self._current_digest(job, path, stat)
            etag = f'"sha256-{digest.hex()}"'
            self.set_header("Content-Type", content_type_for(path.name))
            self.set_header("Content-Disposition", attachment_disposition(path.name))
            self.set_header("Accept-Ranges", "bytes")
            self.set_header("ETag", etag)
            self.set_header("Repr-Digest", repr_digest(digest))
            first, last = self._requested_range(stat.st_size, etag)
            if (first, last) != (0, stat.st_size - 1):
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {first}-{last}/{stat.st_size}")
                source.seek(first)
            length = last - first + 1
            self.set_header("Content-Length", str(length))
            await self._send(source, length)

    async def _current_digest(self, job: Job, path, stat) -> bytes:
        """The digest stored with the job, recomputed (in a thread) only if the file changed since."""
        if (stat.st_size, stat.st_mtime_ns) == (job.source_size, job.source_mtime_ns):
            return bytes.fromhex(job.source_sha256)
        digest = await tornado.ioloop.IOLoop.current().run_in_executor(None, file_sha256, path)
        self.store.update_source_digest(job.id, size=stat.st_size, sha256=digest.hex(), mtime_ns=stat.st_mtime_ns)
        return digest

    def _requested_range(self, size: int, etag: str) -> tuple[int, int]:
        if_range = self.request.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            return 0, size - 1  # the client's partial copy is of another version: send it all
        try:
            wanted = parse_byte_range(self.request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            raise ApiError(416, "range_not_satisfiable", f"the source has {size} bytes",
                           headers={"Content-Range": f"bytes */{size}"}) from None
        return wanted if wanted is not None else (0, size - 1)

    async def _send(self, source, length: int) -> None:
        # write + awaited flush per chunk: the client's pace limits how much the server buffers.
        chunk_size = self.config.server.chunk_size
        remaining = length
        try:
            while remaining > 0:
                chunk = source.read(min(chunk_size, remaining))
                if not chunk:
                    break  # the file shrank under us: Tornado closes the connection on the short body
                self.write(chunk)
                await self.flush()
                remaining -= len(chunk)
                self.services.metrics.bytes_served.inc(len(chunk))
        except tornado.iostream.StreamClosedError:
            return  # the client went away; nothing to clean up
