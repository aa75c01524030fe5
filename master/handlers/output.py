"""/api/jobs/<id>/output: a completed job's converted file, for users.

Mirrors the worker's source download (``download.py``): a strong ``ETag`` and ``Repr-Digest``
(RFC 9530) from the SHA-256 the worker's upload was checked against, a single ``Range`` honoured
when ``If-Range`` (if sent) still names this version, ``Content-Disposition`` with the file's name,
and ``write`` + awaited ``flush`` per chunk. HEAD answers the same headers without the body.
"""

from __future__ import annotations

import os
from pathlib import Path

import tornado.ioloop
import tornado.iostream

from converter_common.digest import file_sha256, repr_digest
from master import errors
from master.auth import Access
from master.content import RangeNotSatisfiable, attachment_disposition, content_type_for, parse_byte_range
from master.errors import ApiError
from master.handlers.base import BaseHandler, check_job_id
from master.paths import resolve_in_root
from master.states import JobStatus
from master.store import Job


class JobOutputHandler(BaseHandler):
    access = {"GET": Access.READ, "HEAD": Access.READ}

    async def get(self, job_id: str) -> None:
        await self._serve(job_id, send_body=True)

    async def head(self, job_id: str) -> None:
        await self._serve(job_id, send_body=False)

    async def _serve(self, job_id: str, send_body: bool) -> None:
        job = self.store.get_job(check_job_id(job_id))
        if job.status is not JobStatus.COMPLETED:
            raise errors.conflict("invalid_job_state", f"job {job.id!r} is {job.status.value}, must be completed")
        path = resolve_in_root(self.config.storage.root, job.output_path, "output_path")
        try:
            output = open(path, "rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError):
            raise errors.not_found("output_not_found", f"the output of job {job.id!r} is missing") from None
        with output:
            stat = os.fstat(output.fileno())
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
                output.seek(first)
            length = last - first + 1
            self.set_header("Content-Length", str(length))
            if send_body:
                await self._send(output, length)

    async def _current_digest(self, job: Job, path: Path, stat: os.stat_result) -> bytes:
        """The digest stored at completion; rehashed (in a thread) if the file was changed after it."""
        changed = stat.st_size != job.output_size or stat.st_mtime > (job.finished_at or 0) + 1
        if job.output_sha256 and not changed:
            return bytes.fromhex(job.output_sha256)
        return await tornado.ioloop.IOLoop.current().run_in_executor(None, file_sha256, path)

    def _requested_range(self, size: int, etag: str) -> tuple[int, int]:
        if_range = self.request.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            return 0, size - 1  # the client's partial copy is of another version: send it all
        try:
            wanted = parse_byte_range(self.request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            raise ApiError(416, "range_not_satisfiable", f"the output has {size} bytes",
                           headers={"Content-Range": f"bytes */{size}"}) from None
        return wanted if wanted is not None else (0, size - 1)

    async def _send(self, output, length: int) -> None:
        chunk_size = self.config.server.chunk_size
        remaining = length
        try:
            while remaining > 0:
                chunk = output.read(min(chunk_size, remaining))
                if not chunk:
                    break  # the file shrank under us: Tornado closes the connection on the short body
                self.write(chunk)
                await self.flush()
                remaining -= len(chunk)
                self.services.metrics.bytes_served.inc(len(chunk))
        except tornado.iostream.StreamClosedError:
            return
