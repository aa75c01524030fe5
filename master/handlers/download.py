"""/api/worker/download-video?job_id=: stream a processing job's source file."""

from __future__ import annotations

import os

import tornado.iostream

from master import errors
from master.content import attachment_disposition, content_type_for
from master.handlers.base import BaseHandler
from master.paths import resolve_in_root


class DownloadVideoHandler(BaseHandler):
    async def get(self) -> None:
        job = self.processing_job(self.job_id_argument())
        path = resolve_in_root(self.config.storage.root, job.source_path, "source_path")
        try:
            source = open(path, "rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError):
            raise errors.not_found("source_not_found", f"the source of job {job.id!r} is missing") from None
        with source:
            size = os.fstat(source.fileno()).st_size
            self.set_header("Content-Type", content_type_for(path.name))
            self.set_header("Content-Length", str(size))
            self.set_header("Content-Disposition", attachment_disposition(path.name))
            await self._send(source, size)

    async def _send(self, source, size: int) -> None:
        # write + awaited flush per chunk: the client's pace limits how much the server buffers.
        chunk_size = self.config.server.chunk_size
        remaining = size
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
