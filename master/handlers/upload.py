"""/api/worker/upload-video?job_id=: receive the converted file as a streamed multipart body.

The body is parsed while it arrives (streaming-form-data) and written to a temp file beside the
destination; only a complete ``video`` part is renamed into place, atomically, and only then does
the job become completed. On any failure the temp file is removed and the job is unchanged.

The parser runs on the IOLoop and copies the video bytes into buffers that one per-upload thread writes
(``O_DIRECT`` where the filesystem allows it) while another hashes them (``converter_common.batchwrite``),
so receiving, writing and hashing overlap. ``data_received`` is a coroutine: it awaits a free buffer,
which is Tornado's back-pressure on the socket.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import tornado.web
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget

from converter_common.batchwrite import BatchWriter, MiB
from converter_common.digest import parse_repr_digest, repr_digest
from master import errors
from master.auth import Access
from master.errors import ApiError
from master.handlers.receiving import ReceivingHandler, UploadSlotHolder, close_file

UPLOAD_FIELD = "video"
TEMP_PREFIX = ".converter-upload-"
TEMP_SUFFIX = ".part"
BATCH_BYTES = 1 * MiB  # BatchFileSink: the writer thread gets 1 MiB batches
IN_FLIGHT_BYTES = 2 * MiB  # at most two batches wait for the thread
# What a multipart body may hold besides its file part: boundaries, part headers, small fields. The parser
# keeps a part's headers in memory, so a body of endless headers is refused instead of held.
OVERHEAD_LIMIT = 1 * MiB


class SinglePart(BaseTarget):
    """A form field that may appear once: a second part of the same name is refused (400), never appended."""

    def start(self) -> None:
        if self._started:
            raise errors.bad_request("duplicate_part", f"the multipart body has more than one {self.name!r} part")
        super().start()


class BatchFileSink(SinglePart):
    """A streaming-form-data target handing the part's bytes to a ``BatchWriter`` (which writes and hashes them).

    The parser calls it synchronously; the handler's async ``data_received`` hands full batches over.
    """

    name = UPLOAD_FIELD
    received = 0  # bytes of the file part handed over so far

    def __init__(self, fd: int, *, direct: bool, writer: Callable[..., BatchWriter] = BatchWriter) -> None:
        super().__init__()
        self.sha256 = hashlib.sha256()
        self.writer = writer(fd, (self.sha256,), batch_bytes=BATCH_BYTES, max_in_flight_bytes=IN_FLIGHT_BYTES,
                             direct=direct, name="upload-writer")

    @property
    def size(self) -> int:
        return self.writer.written

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    def on_data_received(self, chunk: bytes) -> None:
        self.require_file()
        self.received += len(chunk)
        self.writer.add(chunk)

    def require_file(self) -> None:
        if self.multipart_filename is None:
            raise errors.bad_request("not_a_file_part", f"the {UPLOAD_FIELD!r} part must be a file (a filename in its"
                                                        " Content-Disposition), not a plain field")


class MultipartReceiver(UploadSlotHolder):
    """Streams one multipart file part into a temp file (batched writes in a thread, hashed on the way).

    For ``@stream_request_body`` handlers: ``open_multipart`` in ``prepare``, ``feed`` from the async
    ``data_received``, ``finish_part`` in the method; the temp file is gone before any answer leaves,
    unless the handler took it over (``_temp_path = None``). It holds an upload slot from
    ``open_multipart`` until then (503 ``too_many_uploads`` when none is free).
    """

    _temp_path: Path | None = None
    _temp_file = None
    _parser: StreamingFormDataParser | None = None
    _sink: BatchFileSink | None = None
    _body_error: ApiError | None = None
    _fed = 0

    def open_multipart(self, directory: Path) -> StreamingFormDataParser:
        self.take_upload_slot()  # released with the temp file, however the request ends
        try:
            self._parser = StreamingFormDataParser(headers=self.request.headers)
        except Exception as exc:  # the library raises a bare ValueError-like error for a non-multipart type
            raise errors.bad_request("invalid_multipart", f"expected multipart/form-data ({exc})") from None
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        self._temp_path = Path(name)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the video from other users
        self._temp_file = os.fdopen(fd, "wb", buffering=0)
        self._sink = BatchFileSink(fd, direct=self.config.storage.direct_io, writer=self.services.receive_writer)
        self._parser.register(UPLOAD_FIELD, self._sink)
        return self._parser

    async def feed(self, chunk: bytes) -> None:
        self.services.metrics.bytes_received.inc(len(chunk))
        if self._body_error is not None:
            return  # the rest of a rejected body is read and dropped so the client gets the answer
        self._fed += len(chunk)
        try:
            self._parser.data_received(chunk)
            if self._fed - self._sink.received - self.field_bytes() > OVERHEAD_LIMIT:
                raise errors.bad_request("invalid_multipart", "the multipart body's headers and fields exceed"
                                                              f" {OVERHEAD_LIMIT} bytes")
            await self._sink.writer.submit_ready()
        except OSError as exc:
            self._body_error = errors.insufficient_storage(exc.strerror)
        except ApiError as exc:
            self._body_error = exc
        except Exception as exc:  # ParseFailedException and friends: a malformed body is the client's fault
            self._body_error = errors.bad_request("invalid_multipart", f"malformed multipart body ({exc})")

    def field_bytes(self) -> int:
        """Bytes of small text fields kept so far (handlers with fields override this)."""
        return 0

    async def finish_part(self) -> bytes:
        """Check the part arrived whole, wait for its last writes, close the file; its SHA-256."""
        if self._body_error is not None:
            raise self._body_error
        if not self._sink.started:
            raise errors.bad_request("missing_video_part", f"multipart body has no {UPLOAD_FIELD!r} file part")
        if not self._sink.finished:
            raise errors.bad_request("invalid_multipart", "multipart body ended inside the video part")
        self._sink.require_file()
        try:
            await self._sink.writer.afinish()
        except OSError as exc:
            raise errors.insufficient_storage(exc.strerror) from None
        close_file(self._temp_file)
        return self._sink.sha256.digest()

    def finish(self, chunk=None):
        self._discard_temp()  # before the answer leaves: a client that sees an error sees no temp file
        return super().finish(chunk)

    def on_connection_close(self) -> None:
        self._discard_temp()
        super().on_connection_close()

    def _discard_temp(self) -> None:
        self.release_upload_slot()
        if self._sink is not None and self._temp_file is not None and not self._temp_file.closed:
            self._sink.writer.abandon(then_close=self._temp_file)  # closed by the thread after its last write
            self._temp_file = None
        elif self._temp_file is not None and not self._temp_file.closed:
            self._temp_file.close()
        if self._temp_path is not None:
            self._temp_path.unlink(missing_ok=True)
            self._temp_path = None


@tornado.web.stream_request_body
class UploadVideoHandler(MultipartReceiver, ReceivingHandler):
    access = {"POST": Access.WORKER}
    receives_files = True

    def prepare(self) -> None:
        super().prepare()  # authentication, before the body is read
        self.job = self.processing_job(self.job_id_argument())  # before a single byte is stored
        try:
            self.expected_digest = parse_repr_digest(self.request.headers.get("Repr-Digest"))
        except ValueError as exc:
            raise errors.bad_request("invalid_digest", f"Repr-Digest: {exc}") from None
        self.accept_upload(self.config.storage.root)
        self.open_multipart(self.output_destination(self.job).parent)

    async def data_received(self, chunk: bytes) -> None:
        await self.feed(chunk)

    async def post(self) -> None:
        digest = await self.finish_part()
        if self.expected_digest is not None and digest != self.expected_digest:
            raise errors.bad_request("digest_mismatch", f"the video part's SHA-256 is {repr_digest(digest)}, "
                                                        f"Repr-Digest said {repr_digest(self.expected_digest)}")
        job = await self.commit_output(self.job.id, self._temp_path, self._sink.size, digest)
        self._temp_path = None
        self.set_header("Repr-Digest", repr_digest(digest))
        self.write_json({"job_id": job.id, "status": job.status.value, "size": self._sink.size,
                         "sha256": digest.hex(), "output_path": job.output_path})
