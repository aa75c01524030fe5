"""A multipart/form-data body parsed while it streams in: its one file part written to a temp file.

The parser (streaming-form-data) runs on the IOLoop and copies the file's bytes into buffers that one
thread per body writes (``O_DIRECT`` where the filesystem allows it) while another hashes them
(``converter_common.background_file_writer``), so receiving, writing and hashing overlap. The handler's
``data_received`` is a coroutine that awaits a free buffer, which is Tornado's back-pressure on the socket.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget

from converter_common.background_file_writer import BatchWriter, MiB
from converter_common.protocol import UPLOAD_FIELD
from master import errors
from master.errors import ApiError
from master.handlers.file_receiving import UploadSlotHolder, close_file

BATCH_BYTES = 1 * MiB  # BatchFileSink: the writer thread gets 1 MiB batches
IN_FLIGHT_BYTES = 2 * MiB  # at most two batches wait for the thread
# What a multipart body may hold besides its file part: boundaries, part headers, small fields. The parser
# keeps a part's headers in memory, so a body of endless headers is refused instead of held.
OVERHEAD_LIMIT = 1 * MiB
FIELD_LIMIT = 4096  # a text field (profile, output_path, id)


class SinglePart(BaseTarget):
    """A form field that may appear once: a second part of the same name is refused (400), never appended."""

    def start(self) -> None:
        if self._started:
            raise errors.DUPLICATE_PART.error(f"the multipart body has more than one {self.name!r} part")
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
            raise errors.NOT_A_FILE_PART.error(f"the {UPLOAD_FIELD!r} part must be a file (a filename in its"
                                                        " Content-Disposition), not a plain field")


class TextField(SinglePart):
    """A small text part kept in memory; longer than ``FIELD_LIMIT`` bytes is refused."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._data = bytearray()

    def on_data_received(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > FIELD_LIMIT:
            raise ValueError(f"field {self.name!r} is longer than {FIELD_LIMIT} bytes")

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def value(self) -> str | None:
        if not self._started:
            return None
        try:
            return self._data.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.INVALID_FIELD.error(f"field {self.name!r} is not UTF-8") from None


def form_filename(raw: str) -> str:
    """The file name a browser or curl meant: they send ``"``, CR and LF in a form's filename as %22, %0D, %0A."""
    return raw.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


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
            raise errors.INVALID_MULTIPART.error(f"expected multipart/form-data ({exc})") from None
        fd, self._temp_path = self.services.uploads.open_multipart_temp(directory)
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
                raise errors.INVALID_MULTIPART.error("the multipart body's headers and fields exceed"
                                                              f" {OVERHEAD_LIMIT} bytes")
            await self._sink.writer.submit_ready()
        except OSError as exc:
            self._body_error = errors.cannot_store(exc.strerror)
        except ApiError as exc:
            self._body_error = exc
        except Exception as exc:  # ParseFailedException and friends: a malformed body is the client's fault
            self._body_error = errors.INVALID_MULTIPART.error(f"malformed multipart body ({exc})")

    def field_bytes(self) -> int:
        """Bytes of small text fields kept so far (handlers with fields override this)."""
        return 0

    async def finish_part(self) -> bytes:
        """Check the part arrived whole, wait for its last writes, close the file; its SHA-256."""
        if self._body_error is not None:
            raise self._body_error
        if not self._sink.started:
            raise errors.MISSING_VIDEO_PART.error()
        if not self._sink.finished:
            raise errors.INVALID_MULTIPART.error("multipart body ended inside the video part")
        self._sink.require_file()
        try:
            await self._sink.writer.afinish()
        except OSError as exc:
            raise errors.cannot_store(exc.strerror) from None
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

