"""/api/uploads: resumable uploads (tus 1.0.0) of a job's output, or of a user's source.

Extensions: creation, checksum (sha1, sha256 per PATCH), termination, expiration. Upload-Metadata carries
``job_id`` (an output upload) or ``profile`` (a source upload, with optional ``id``, ``output_path``,
``filename``), and ``sha256`` (the whole file's digest, raw or hex; verified at the end). A client that
hashes while it sends can instead put the whole file's digest on the PATCH that completes the upload, as
``Repr-Digest: sha-256=:<base64>:`` (RFC 9530). The bytes of a cut PATCH are kept, so the client resumes
from the offset HEAD reports; with Upload-Checksum a cut or mismatching PATCH is discarded whole.

A PATCH body is received straight from the socket into page-aligned buffers (``recv_into``,
``master.http_server.BodyReceiver``: no Python object per piece) that one per-PATCH thread writes
(``O_DIRECT`` where the filesystem allows it) while another hashes them
(``converter_common.background_file_writer``); waiting for a free buffer is the back-pressure. A chunked
body takes Tornado's way, ``data_received``, into the same buffers. Ending a PATCH
("settling") waits for that thread, so it is a coroutine; while one settles, HEAD and a new PATCH of the
same upload wait for it, and a PATCH while another is still receiving gets 409 ``upload_busy``. The
upload's state between requests is ``master.uploads.UploadRegistry``'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from email.utils import formatdate

import tornado.web

from converter_common.background_file_writer import BatchWriter, MiB
from converter_common.digest import parse_upload_checksum
from converter_common.protocol import JOB_ID_HEADER, TUS_CONTENT_TYPE, TUS_VERSION, UPLOADS
from master import errors
from master.auth import Access
from master.handlers.base import check_job_id
from master.handlers.file_receiving import ReceivingHandler
from master.intake import new_job_id, priority_from_text
from master.store import Upload

CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
BATCH_BYTES = 2 * MiB
IN_FLIGHT_BYTES = 4 * MiB
DECIMAL = re.compile(r"[0-9]+")


class _TusHandler(ReceivingHandler):
    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self.uploads = services.uploads

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Tus-Resumable", TUS_VERSION)

    def check_tus_version(self) -> None:
        if self.request.method != "OPTIONS" and self.request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise errors.UNSUPPORTED_TUS_VERSION.error()

    def options(self, *_args, **_kwargs) -> None:
        self.set_header("Tus-Version", TUS_VERSION)
        self.set_header("Tus-Extension", "creation,checksum,termination,expiration")
        self.set_header("Tus-Checksum-Algorithm", ",".join(CHECKSUMS))
        self.set_header("Tus-Max-Size", str(self.config.server.max_upload_size))
        self.set_status(204)
        self.finish()

    def say_expiry(self, expires_at: float | None) -> None:
        if expires_at is not None:
            self.set_header("Upload-Expires", formatdate(expires_at, usegmt=True))


class TusCreationHandler(_TusHandler):
    metric_label = "UploadsHandler"
    access = {"OPTIONS": Access.OPEN, "POST": Access.WORKER}

    def prepare(self) -> None:
        super().prepare()
        self.check_tus_version()

    async def post(self) -> None:
        if "Upload-Defer-Length" in self.request.headers:
            raise errors.UNSUPPORTED.error("Upload-Defer-Length is not supported")
        length = _non_negative(self.request.headers.get("Upload-Length"), "Upload-Length")
        if length > self.config.server.max_upload_size:
            raise errors.body_too_large(self.config.server.max_upload_size)
        metadata = parse_metadata(self.request.headers.get("Upload-Metadata", ""))
        if "profile" in metadata:
            upload = await self._create_source_upload(length, metadata)
            self.set_header(JOB_ID_HEADER, upload.job_id)
        else:
            upload = await self._create_output_upload(length, metadata)
        self.say_expiry(upload.expires_at)
        self.set_header("Location", f"{UPLOADS}/{upload.id}")
        self.set_status(201)
        self.finish()

    async def _create_output_upload(self, length: int, metadata: dict[str, bytes]) -> Upload:
        """A worker's upload of its job's output; an empty output is committed at once."""
        job = self.processing_job(check_job_id(metadata.get("job_id", b"").decode("utf-8", "replace")))
        expected = _metadata_digest(metadata.get("sha256"))
        upload = self.uploads.create_for_output(job, worker_id=self.worker_id_header(), length=length,
                                                directory=self.output_staging_dir(job), sha256=expected)
        if length == 0:
            try:
                await self.commit_output(job.id, self.uploads.temp_path(upload), 0, hashlib.sha256().digest(),
                                         upload_id=upload.id)
            except BaseException:
                self.uploads.forget(upload)
                raise
            self.uploads.completed(upload)
        return upload

    async def _create_source_upload(self, length: int, metadata: dict[str, bytes]) -> Upload:
        """A user's source, uploaded resumably: the job (id, profile, output) is created once it is complete."""
        self.authorize(Access.ADMIN)
        text = metadata_text({key: value for key, value in metadata.items() if key != "sha256"})
        job_id = check_job_id(text["id"]) if text.get("id") else new_job_id()
        profile = self.services.intake.profile(text["profile"])
        priority = priority_from_text(text.get("priority"))
        output_path = None
        if text.get("output_path"):
            output_path = self.services.storage.path(text["output_path"], "output_path")
            await self.services.intake.check_output(output_path, None, profile)
        return self.uploads.create_for_source(
            job_id=job_id, length=length, profile=profile, output_path=output_path, filename=text.get("filename", ""),
            sha256=_metadata_digest(metadata.get("sha256")), directory=self.services.intake.incoming_dir(),
            priority=priority)


@tornado.web.stream_request_body
class TusUploadHandler(_TusHandler):
    metric_label = "UploadHandler"
    access = {"OPTIONS": Access.OPEN, "HEAD": Access.WORKER, "PATCH": Access.WORKER, "DELETE": Access.WORKER}
    receives_files = True

    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._file = None
        self._writer: BatchWriter | None = None
        self._checksum: tuple[str, bytes] | None = None
        self._request_hash = None
        self._settled = True
        self._receiving = False  # this request holds the upload's busy marker, its body not yet started
        self._final_digest: bytes | None = None
        self._write_error: OSError | None = None
        self._expires_at: float | None = None
        self._dropped: bytearray | None = None  # where the rest of a body that is not kept is received

    async def prepare(self) -> None:
        super().prepare()
        self.check_tus_version()
        if self.request.method == "OPTIONS":
            return
        self.upload = self._authorized_upload(self.path_kwargs["upload_id"])
        if self.request.method not in ("PATCH", "HEAD"):
            return
        if self.request.method == "HEAD":  # a client asking where to resume: let a cut PATCH drain first
            await self.uploads.wait_until_received(self.upload.id)
        if await self.uploads.wait_settled(self.upload.id):  # another PATCH has just ended: read its outcome
            self.upload = self.store.get_upload(self.upload.id)
        if self.request.method == "PATCH":
            await self._start_patch()

    def _authorized_upload(self, upload_id: str) -> Upload:
        upload = self.store.get_upload(upload_id)
        if upload.bucket_upload_id is not None:  # a source going straight to the bucket: not a tus upload
            raise errors.UPLOAD_NOT_FOUND.error(f"no tus upload {upload_id}")
        if upload.kind == "source":
            self.authorize(Access.ADMIN)  # a user's source: the admin token, not a worker's
        else:
            self.processing_job(upload.job_id)
        return upload

    async def _start_patch(self) -> None:
        """Check the PATCH's headers, claim the upload and open its file at the offset."""
        if self.uploads.is_busy(self.upload.id):
            raise errors.UPLOAD_BUSY.error()
        if self.request.headers.get("Content-Type") != TUS_CONTENT_TYPE:
            raise errors.UNSUPPORTED_MEDIA_TYPE.error()
        offset = _non_negative(self.request.headers.get("Upload-Offset"), "Upload-Offset")
        if offset != self.upload.offset:
            raise errors.OFFSET_MISMATCH.error(f"the upload is at offset {self.upload.offset}")
        self.accept_body(self.upload.length - offset)  # Tornado stops a body that goes past Upload-Length
        self._checksum = self._requested_checksum()
        self._final_digest = self.repr_digest_header()  # if this PATCH completes it
        self.take_upload_slot()
        self.uploads.begin_receiving(self.upload.id)  # before the first await: one PATCH at a time
        self._receiving = True  # ended by on_finish / on_connection_close if this PATCH never starts
        self._whole_hash = await self.uploads.resume_hash(self.upload)
        self._hash_at_start = self._whole_hash.copy()
        self._open_file(offset)
        hashers = (self._whole_hash,) if self._request_hash is None else (self._whole_hash, self._request_hash)
        self._writer = self.services.receive_writer(
            self._file.fileno(), hashers, batch_bytes=BATCH_BYTES, max_in_flight_bytes=IN_FLIGHT_BYTES,
            direct=self.config.storage.direct_io, name="tus-writer")
        self._settled = False
        self.request.connection.set_body_timeout(self.config.server.timeout)
        self.request.connection.receive_body_into(self)  # a body with a Content-Length skips data_received

    def _open_file(self, offset: int) -> None:
        try:
            self._file = open(self.uploads.temp_path(self.upload), "r+b", buffering=0)
        except FileNotFoundError:
            self.release_upload_slot()
            raise errors.UPLOAD_NOT_FOUND.error("the upload's data is gone; create a new upload") from None
        self._file.seek(offset)
        self._file.truncate()

    async def data_received(self, chunk: bytes) -> None:
        self.services.metrics.bytes_received.inc(len(chunk))
        if self._settled or self._write_error is not None:
            return  # settling after a cut connection, or a write failed: the rest of the body is dropped
        try:
            await self._writer.awrite(chunk)
        except OSError as exc:  # raising here would close the connection unanswered: patch() answers 507
            self._write_error = exc

    async def body_space(self) -> memoryview:
        if self._settled or self._write_error is not None:
            return self._scratch()  # as in data_received: the rest of the body is read and dropped
        try:
            return await self._writer.space()
        except OSError as exc:
            self._write_error = exc
            return self._scratch()

    def body_received(self, count: int) -> None:
        self.services.metrics.bytes_received.inc(count)
        if not self._settled and self._write_error is None:
            self._writer.filled(count)

    def _scratch(self) -> memoryview:
        if self._dropped is None:
            self._dropped = bytearray(64 * 1024)
        return memoryview(self._dropped)

    async def patch(self, upload_id: str) -> None:
        write_error = self._write_error
        try:
            await self._writer.afinish()
        except OSError as exc:
            write_error = write_error or exc
        if self._checksum is not None and (write_error or self._request_hash.digest() != self._checksum[1]):
            await self._start_settle(keep=False)  # a PATCH that cannot be verified whole is dropped whole
            if write_error is None:
                raise errors.CHECKSUM_MISMATCH.error()
        else:
            new_offset = await self._start_settle(keep=True)
        if write_error is not None:
            raise errors.storage_error(write_error)
        if new_offset == self.upload.length:
            await self._complete()
        else:
            self.say_expiry(self._expires_at)
        self.set_header("Upload-Offset", str(new_offset))
        self.set_status(204)
        self.finish()

    def head(self, upload_id: str) -> None:
        self.set_header("Upload-Offset", str(self.upload.offset))
        self.set_header("Upload-Length", str(self.upload.length))
        self.say_expiry(self.upload.expires_at)
        self.set_header("Cache-Control", "no-store")
        self.set_status(200)
        self.finish()

    def delete(self, upload_id: str) -> None:
        self.uploads.forget(self.upload)
        self.set_status(204)
        self.finish()

    def on_connection_close(self) -> None:
        if not self._settled:  # a cut PATCH: keep what reached the file unless it was to be checksummed
            self._start_settle(keep=self._checksum is None)
        self._end_receiving()
        super().on_connection_close()  # ends the request's body wait: without it the handler lingers until shutdown

    def on_finish(self) -> None:
        if not self._settled:
            self._start_settle(keep=False)
        self._end_receiving()

    def _end_receiving(self) -> None:
        """Drop our busy marker if the PATCH ended before its body started (an error in prepare)."""
        if self._receiving and self._settled:
            self._receiving = False
            self.uploads.end_receiving(self.upload.id)

    async def _complete(self) -> None:
        """The last byte is in: check the whole file's digest, then complete the job or create it."""
        digest = self._whole_hash.digest()
        expected = {self.upload.sha256, self._final_digest.hex() if self._final_digest else None} - {None}
        if any(digest.hex() != wanted for wanted in expected):
            self.uploads.forget(self.upload)
            raise errors.DIGEST_MISMATCH.error("the uploaded file's SHA-256 differs from the declared one"
                                               " (metadata or Repr-Digest); create a new upload")
        upload = self.upload
        if upload.kind == "source":
            job = await self.services.intake.from_received_file(
                job_id=upload.job_id, received=self.uploads.temp_path(upload), client_name=upload.filename or "",
                output_path=upload.output_path, profile=upload.profile, sha256=digest, upload_id=upload.id,
                priority=upload.priority)
            self.set_header(JOB_ID_HEADER, job.id)
        else:
            await self.commit_output(upload.job_id, self.uploads.temp_path(upload), upload.length, digest,
                                     upload_id=upload.id)
        self.uploads.completed(upload)

    def _start_settle(self, *, keep: bool) -> "asyncio.Future[int]":
        """Mark this PATCH as ending (at once, so it ends once) and settle it; others wait on the future."""
        self._settled = True
        self.release_upload_slot()
        settling = asyncio.ensure_future(self._settle(keep=keep))
        self._receiving = False  # the marker is now the settling future, removed when it is done
        self.uploads.settle(self.upload.id, settling)
        return settling

    async def _settle(self, *, keep: bool) -> int:
        """Wait for the writer, then record the new offset and running hash, or roll both back.

        Kept: every byte that arrived, all of it on file and hashed. Writing and hashing run side by side,
        so after a write error the hash may be ahead of the file: then the whole PATCH is dropped (the
        client resends it from the old offset).
        """
        if keep:
            try:
                await self._writer.afinish()
            except OSError:
                keep = False
        else:
            await self._writer.drain()
        keep = keep and not self._writer.failed
        offset = self.upload.offset + (self._writer.written if keep else 0)
        try:
            self._file.truncate(offset)  # a no-op when kept; drops the PATCH when not
        except OSError:
            offset, keep = self.upload.offset, False
        finally:
            try:
                self._file.close()
            except OSError:
                pass  # the offset recorded below is what counts; bytes past it are rewritten on resume
        self._expires_at = self.uploads.record_offset(self.upload, offset,
                                                      self._whole_hash if keep else self._hash_at_start)
        return offset

    def _requested_checksum(self) -> tuple[str, bytes] | None:
        header = self.request.headers.get("Upload-Checksum")
        if header is None:
            return None
        try:
            algorithm, digest = parse_upload_checksum(header)
        except ValueError as exc:
            raise errors.INVALID_CHECKSUM.error(str(exc)) from None
        if algorithm not in CHECKSUMS:
            raise errors.UNSUPPORTED_CHECKSUM_ALGORITHM.error(f"use one of {', '.join(CHECKSUMS)}")
        self._request_hash = CHECKSUMS[algorithm]()
        return algorithm, digest


def parse_metadata(header: str) -> dict[str, bytes]:
    """tus Upload-Metadata: ``key base64value,key2,key3 base64value``."""
    metadata = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            metadata[key] = base64.b64decode(value, validate=True) if value else b""
        except (binascii.Error, ValueError):
            raise errors.INVALID_METADATA.error(f"Upload-Metadata value of {key!r} is not base64") from None
    return metadata


def metadata_text(metadata: dict[str, bytes]) -> dict[str, str]:
    """The metadata's values as text; a value that is not UTF-8 is refused, never turned into another name."""
    try:
        return {key: value.decode("utf-8") for key, value in metadata.items()}
    except UnicodeDecodeError:
        raise errors.INVALID_METADATA.error("Upload-Metadata values must be UTF-8 text") from None


def _metadata_digest(value: bytes | None) -> bytes | None:
    """The whole file's SHA-256 from metadata: the 32 raw bytes, or their 64 hex digits (what tus clients that
    encode metadata as text can send)."""
    if value is None:
        return None
    if len(value) == 32:
        return value
    try:
        digest = bytes.fromhex(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        digest = b""
    if len(digest) != 32:
        raise errors.INVALID_DIGEST.error("metadata sha256 must be a SHA-256 digest (raw or hex)")
    return digest


def _non_negative(value: str | None, name: str) -> int:
    if value is None or not DECIMAL.fullmatch(value) or len(value) > 19:
        raise errors.INVALID_HEADER.error(f"{name} must be a non-negative integer")
    return int(value)
