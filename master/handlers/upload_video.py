"""/api/worker/upload-video?job_id=: receive the converted file as a streamed multipart body.

The ``video`` part is written to a temp file beside the destination while it arrives
(``multipart.MultipartReceiver``); only a complete part is renamed into place, atomically, and only
then does the job become completed. On any failure the temp file is removed and the job is unchanged.
"""

from __future__ import annotations

import tornado.web

from converter_common.digest import repr_digest
from master import errors
from master.auth import Access
from master.handlers.file_receiving import ReceivingHandler
from master.handlers.multipart import MultipartReceiver


@tornado.web.stream_request_body
class UploadVideoHandler(MultipartReceiver, ReceivingHandler):
    access = {"POST": Access.WORKER}
    receives_files = True

    def prepare(self) -> None:
        super().prepare()  # authentication, before the body is read
        self.job = self.processing_job(self.job_id_argument())  # before a single byte is stored
        self.expected_digest = self.repr_digest_header()
        self.accept_upload(self.output_staging_dir(self.job))
        self.open_multipart(self.output_staging_dir(self.job))

    async def data_received(self, chunk: bytes) -> None:
        await self.feed(chunk)

    async def post(self) -> None:
        digest = await self.finish_part()
        if self.expected_digest is not None and digest != self.expected_digest:
            raise errors.DIGEST_MISMATCH.error(f"the video part's SHA-256 is {repr_digest(digest)}, "
                                               f"Repr-Digest said {repr_digest(self.expected_digest)}")
        job = await self.commit_output(self.job.id, self._temp_path, self._sink.size, digest)
        self._temp_path = None
        self.set_header("Repr-Digest", repr_digest(digest))
        self.write_json({"job_id": job.id, "status": job.status.value, "size": self._sink.size,
                         "sha256": digest.hex(), "output_path": job.output_path})

