"""A multipart/form-data body parsed while it streams in: its one file part written to a temp file.

The parser (streaming-form-data) reads the body's framing: preamble, part headers, small fields, the
end. The file part's bytes skip it: they are received from the socket straight into the buffers that one
thread per body writes (``O_DIRECT`` where the filesystem allows it) while another hashes them
(``converter_common.background_file_writer``), and are only searched for the next boundary
(``FilePartReader``). Waiting for a free buffer is the back-pressure on the socket. A chunked body takes
Tornado's way instead: ``data_received`` hands every piece to the parser, which copies the file's bytes
into the same buffers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Callable

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import parse_content_boundary
from streaming_form_data.targets import BaseTarget

from converter_common.background_file_writer import BatchWriter, MiB
from converter_common.protocol import UPLOAD_FIELD
from master import errors
from master.errors import ApiError
from master.handlers.file_receiving import UploadSlotHolder, close_file

BATCH_BYTES = 2 * MiB  # BatchFileSink: the writer thread gets 2 MiB batches
IN_FLIGHT_BYTES = 4 * MiB  # at most two batches wait for the thread
# What a multipart body may hold besides its file part: boundaries, part headers, small fields. The parser
# keeps a part's headers in memory, so a body of endless headers is refused instead of held.
OVERHEAD_LIMIT = 1 * MiB
FIELD_LIMIT = 4096  # a text field (profile, output_path, id)
SCRATCH_BYTES = 64 * 1024  # what goes to the parser is received here
# Inside the file part, the parser holds at most a possible boundary start and less than its minimum piece
# (1 KiB): this much more lets it hand everything on, and the part is received in place again.
SETTLE_BYTES = 4096
HEADER_END = b"\r\n\r\n"
LINE_END = re.compile(rb"\r\n")


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

    def stored_in_place(self, count: int) -> None:
        """``count`` bytes of the part were received straight into the writer's space (``FilePartReader``)."""
        self.received += count
        self.writer.filled(count)

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


class FilePartReader:
    """Receives a multipart body so that the file part's bytes never pass through the parser.

    Parsing: bytes are received into a scratch buffer and fed to the parser. Once the file part's data has
    begun and the parser holds none of it back (between calls it keeps a possible boundary start and
    pieces smaller than its minimum), it switches to receiving: bytes land in the writer's buffer and only
    the search for ``CRLF--boundary`` looks at them. What is before a boundary is the file's; the boundary
    and what follows go back to the parser, which ends the part (or, if it was not a real boundary, hands
    the bytes on as data). So do the last bytes of a full buffer when they could begin a boundary.

    Where the part's data begins is known exactly because, until then, pieces are cut at line ends and the
    blank line that ends the file part's headers is one of them.
    """

    def __init__(self, parser: StreamingFormDataParser, sink: BatchFileSink, boundary: bytes) -> None:
        self._parser = parser
        self._sink = sink
        self._boundary = b"\r\n--" + boundary
        self.scratch = bytearray(SCRATCH_BYTES)
        self._receiving = False
        self._space: memoryview | None = None
        self._pending = 0  # received at the start of the space; may begin a boundary
        self._data_fed: int | None = None  # the part's data bytes fed to the parser since it last took over
        self._emitted_before = 0  # what the sink had received then
        self._tail = b""  # the last bytes fed before the data began: a line end may span two pieces

    async def space(self) -> memoryview:
        while self._receiving:
            self._space = await self._sink.writer.space()
            if len(self._space) > self._pending:
                return self._space[self._pending:]
            self._hand_back(0, self._pending)  # the buffer is full up to a possible boundary: the parser decides
        if self._data_fed is not None and not self._sink.finished:
            return memoryview(self.scratch)[:SETTLE_BYTES]  # inside the file part: a little more settles it
        return memoryview(self.scratch)

    def received(self, count: int) -> None:
        """``count`` bytes arrived in the view ``space`` returned."""
        if self._receiving:
            self._scan(self._pending + count)
        else:
            self._feed(bytes(self.scratch[:count]))

    def _scan(self, end: int) -> None:
        found = self._sink.writer.find(self._boundary, 0, end)
        if found >= 0:
            self._sink.stored_in_place(found)
            self._hand_back(found, end)
            return
        with self._space[max(0, end - len(self._boundary) + 1):end] as tail:
            self._pending = _boundary_start_length(bytes(tail), self._boundary)
        self._sink.stored_in_place(end - self._pending)
        self._space.release()

    def _hand_back(self, start: int, end: int) -> None:
        """The space's bytes ``[start, end)`` go to the parser, which takes over."""
        data = bytes(self._space[start:end])
        self._space.release()
        self._receiving, self._pending = False, 0
        self._data_fed, self._emitted_before = 0, self._sink.received
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._data_fed is None:
            self._feed_until_data(data)
        else:
            self._feed_piece(data)
        sink = self._sink
        holds_nothing = self._data_fed is not None and sink.received - self._emitted_before == self._data_fed
        if holds_nothing and sink.started and not sink.finished and sink.multipart_filename is not None:
            self._receiving = True

    def _feed_until_data(self, data: bytes) -> None:
        """Feed ``data`` in pieces cut at line ends, so that where the file part's data begins (after the blank
        line that ends its headers) is a piece's end: from there on, what the parser holds back is known."""
        seen = self._tail + data
        start = 0
        for line_end in LINE_END.finditer(seen):
            cut = line_end.end() - len(self._tail)
            if cut <= start:
                continue
            self._parser.data_received(data[start:cut])
            start = cut
            if self._sink.started and seen[:len(self._tail) + cut].endswith(HEADER_END):
                self._data_fed, self._emitted_before = 0, self._sink.received
                break
        self._tail = seen[-len(HEADER_END):]
        if start < len(data):
            self._feed_piece(data[start:])

    def _feed_piece(self, data: bytes) -> None:
        started = self._sink.started
        self._parser.data_received(data)
        if started and self._data_fed is not None:
            self._data_fed += len(data)


def _boundary_start_length(tail: bytes, boundary: bytes) -> int:
    """The length of the longest end of ``tail`` that is the start of ``boundary`` (0 if none)."""
    position = tail.find(b"\r")
    while position >= 0:
        if boundary.startswith(tail[position:]):
            return len(tail) - position
        position = tail.find(b"\r", position + 1)
    return 0


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
    _reader: FilePartReader | None = None
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
        self._reader = FilePartReader(self._parser, self._sink, parse_content_boundary(self.request.headers))
        self.request.connection.receive_body_into(self)  # a body with a Content-Length: body_space/body_received
        return self._parser

    async def feed(self, chunk: bytes) -> None:
        """A piece of a chunked body (``data_received``): all of it through the parser."""
        self.services.metrics.bytes_received.inc(len(chunk))
        if self._body_error is not None:
            return  # the rest of a rejected body is read and dropped so the client gets the answer
        self._fed += len(chunk)
        with self._answering_errors():
            self._parser.data_received(chunk)
            self._check_overhead()
            await self._sink.writer.submit_ready()

    async def body_space(self) -> memoryview:
        if self._body_error is None:
            with self._answering_errors():
                return await self._reader.space()
        return memoryview(self._reader.scratch)  # the rest of a rejected body is read and dropped

    def body_received(self, count: int) -> None:
        self.services.metrics.bytes_received.inc(count)
        if self._body_error is None:
            self._fed += count
            with self._answering_errors():
                self._reader.received(count)
                self._check_overhead()

    @contextlib.contextmanager
    def _answering_errors(self):
        """An error while taking the body becomes the answer ``finish_part`` gives; the rest is dropped."""
        try:
            yield
        except OSError as exc:
            self._body_error = errors.cannot_store(exc.strerror)
        except ApiError as exc:
            self._body_error = exc
        except Exception as exc:  # ParseFailedException and friends: a malformed body is the client's fault
            self._body_error = errors.INVALID_MULTIPART.error(f"malformed multipart body ({exc})")

    def _check_overhead(self) -> None:
        if self._fed - self._sink.received - self.field_bytes() > OVERHEAD_LIMIT:
            raise errors.INVALID_MULTIPART.error(
                f"the multipart body's headers and fields exceed {OVERHEAD_LIMIT} bytes")

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

