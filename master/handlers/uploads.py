"""/api/uploads: resumable uploads of a job's output, speaking tus 1.0.0.

Extensions: creation, checksum (sha1, sha256 per PATCH), termination. Upload-Metadata carries
``job_id`` (required) and ``sha256`` (the whole file's digest, raw or hex; verified before the
rename). A client that hashes while it sends can instead put the whole file's digest on the PATCH
that completes the upload, as ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530); it is verified the same way. The bytes of a cut PATCH are kept, so the client resumes from the offset HEAD reports;
with Upload-Checksum a cut or mismatching PATCH is discarded whole (it cannot be verified).

A PATCH body is copied into 1 MiB buffers that one per-PATCH thread writes (``O_DIRECT`` where the
filesystem allows it) while another hashes them (``converter_common.batchwrite``), so the IOLoop only
copies; ``data_received`` awaits a free buffer, which is the back-pressure. Ending a
PATCH ("settling") waits for that thread, so it is a coroutine; while one settles, HEAD and a new PATCH
of the same upload wait for it, and a PATCH while another is still receiving gets 409 ``upload_busy``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import tornado.ioloop
import tornado.web

from converter_common.batchwrite import BatchWriter, MiB
from converter_common.noclobber import place_new
from converter_common.digest import parse_repr_digest, parse_upload_checksum
from master import errors
from master.auth import Access
from master.errors import ApiError
from master.handlers.base import check_job_id
from master.handlers.receiving import ReceivingHandler, fsync_path
from master.paths import free_bytes, resolve_in_root, storage_relative
from master.submission import INCOMING_DIR, check_output, default_outputs, insert_job, source_extension
from master.store import DuplicateUpload, Upload

TUS_VERSION = "1.0.0"
TUS_PREFIX = ".converter-tus-"
TUS_SUFFIX = ".part"
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
BATCH_BYTES = 1 * MiB
IN_FLIGHT_BYTES = 2 * MiB
SETTLE_WAIT = 30.0  # how long HEAD/PATCH wait for another PATCH of the upload to settle
RECEIVING = "receiving"  # busy marker of a PATCH whose body is still arriving
DECIMAL = re.compile(r"[0-9]+")


class _TusHandler(ReceivingHandler):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Tus-Resumable", TUS_VERSION)

    def check_tus_version(self) -> None:
        if self.request.method != "OPTIONS" and self.request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise ApiError(412, "unsupported_tus_version", f"send Tus-Resumable: {TUS_VERSION}",
                           headers={"Tus-Version": TUS_VERSION})

    def options(self, *_args, **_kwargs) -> None:
        self.set_header("Tus-Version", TUS_VERSION)
        self.set_header("Tus-Extension", "creation,checksum,termination,expiration")
        self.set_header("Tus-Checksum-Algorithm", ",".join(CHECKSUMS))
        self.set_header("Tus-Max-Size", str(self.config.server.max_upload_size))
        self.set_status(204)
        self.finish()

    def temp_path(self, upload: Upload) -> Path:
        return self.config.storage.root / upload.temp_path

    def new_expiry(self) -> float:
        return time.time() + self.config.jobs.upload_expiry

    def say_expiry(self, expires_at: float | None) -> None:
        if expires_at is not None:
            self.set_header("Upload-Expires", formatdate(expires_at, usegmt=True))


class UploadsHandler(_TusHandler):
    access = {"OPTIONS": Access.OPEN, "POST": Access.WORKER}

    def prepare(self) -> None:
        super().prepare()
        self.check_tus_version()

    async def post(self) -> None:
        if "Upload-Defer-Length" in self.request.headers:
            raise errors.bad_request("unsupported", "Upload-Defer-Length is not supported")
        length = _non_negative(self.request.headers.get("Upload-Length"), "Upload-Length")
        if length > self.config.server.max_upload_size:
            raise errors.body_too_large(self.config.server.max_upload_size)
        metadata = parse_metadata(self.request.headers.get("Upload-Metadata", ""))
        if "profile" in metadata:
            self._create_source_upload(length, metadata)
            return
        job = self.processing_job(check_job_id(metadata.get("job_id", b"").decode("utf-8", "replace")))
        expected = _metadata_digest(metadata.get("sha256"))
        destination = self.output_destination(job)
        if length > free_bytes(destination.parent):
            raise ApiError(507, "insufficient_storage", "not enough free space on the master for this upload")
        upload_id = uuid.uuid4().hex
        temp = destination.parent / f"{TUS_PREFIX}{upload_id}{TUS_SUFFIX}"
        upload, replaced = self.store.create_upload(
            upload_id=upload_id, job_id=job.id, worker_id=self.worker_id_header(), length=length,
            temp_path=os.path.relpath(temp, self.config.storage.root.resolve()),
            sha256=expected.hex() if expected else None, attempt=job.attempts, expires_at=self.new_expiry())
        create_empty(temp)
        for old in replaced:
            self.temp_path(old).unlink(missing_ok=True)
            self.services.upload_hashes.pop(old.id, None)
        self.services.upload_hashes[upload.id] = (0, hashlib.sha256())
        if length == 0:
            try:
                await self.commit_output(job.id, temp, 0, hashlib.sha256().digest())
            finally:
                self.store.delete_upload(upload.id)
        self.say_expiry(upload.expires_at)
        self.set_header("Location", f"/api/uploads/{upload.id}")
        self.set_status(201)
        self.finish()

    def _create_source_upload(self, length: int, metadata: dict[str, bytes]) -> None:
        """A user's source, uploaded resumably: the job (id, profile, output) is created once it is complete."""
        self.authorize(Access.ADMIN)
        text = metadata_text({key: value for key, value in metadata.items() if key != "sha256"})
        job_id = check_job_id(text["id"]) if text.get("id") else uuid.uuid4().hex[:16]
        if self.store.job_exists(job_id):
            raise errors.conflict("duplicate_job", f"a job with id {job_id!r} already exists")
        profile = text["profile"]
        if profile not in self.config.profiles:
            raise errors.bad_request("unknown_profile", f"profile must be one of: {', '.join(self.config.profiles)}")
        output_path = None
        if text.get("output_path"):
            output = resolve_in_root(self.config.storage.root, text["output_path"], "output_path")
            check_output(output, None, profile)
            output_path = storage_relative(self.config.storage.root, output)
        if length == 0:
            raise errors.bad_request("invalid_header", "a source cannot be empty")
        incoming = self.config.storage.root / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        if length > free_bytes(incoming):
            raise ApiError(507, "insufficient_storage", "not enough free space on the master for this upload")
        expected = _metadata_digest(metadata.get("sha256"))
        upload_id = uuid.uuid4().hex
        temp = incoming / f"{TUS_PREFIX}{upload_id}{TUS_SUFFIX}"
        try:
            upload, _ = self.store.create_upload(
                upload_id=upload_id, job_id=job_id, worker_id=None, length=length,
                temp_path=os.path.relpath(temp, self.config.storage.root.resolve()),
                sha256=expected.hex() if expected else None, kind="source", profile=profile,
                output_path=output_path, filename=text.get("filename", ""), expires_at=self.new_expiry())
        except DuplicateUpload as exc:
            raise errors.conflict("duplicate_job", f"upload {exc.upload.id} is already creating job {job_id!r};"
                                                   " resume it or choose another id") from None
        create_empty(temp)
        self.services.upload_hashes[upload.id] = (0, hashlib.sha256())
        self.say_expiry(upload.expires_at)
        self.set_header("Location", f"/api/uploads/{upload.id}")
        self.set_header("Converter-Job-Id", job_id)
        self.set_status(201)
        self.finish()


@tornado.web.stream_request_body
class UploadHandler(_TusHandler):
    access = {"OPTIONS": Access.OPEN, "HEAD": Access.WORKER, "PATCH": Access.WORKER, "DELETE": Access.WORKER}
    receives_files = True

    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._file = None
        self._writer: BatchWriter | None = None
        self._received = 0
        self._request_hash = None
        self._settled = True
        self._marked = False  # this request put the RECEIVING marker on its upload
        self._final_digest: bytes | None = None
        self._write_error: OSError | None = None
        self._expires_at: float | None = None

    async def prepare(self) -> None:
        super().prepare()
        self.check_tus_version()
        if self.request.method == "OPTIONS":
            return
        upload_id = self.path_kwargs["upload_id"]
        self.upload = self.store.get_upload(upload_id)
        if self.upload.kind == "source":
            self.authorize(Access.ADMIN)  # a user's source: the admin token, not a worker's
        else:
            self.processing_job(self.upload.job_id)
        if self.request.method not in ("PATCH", "HEAD"):
            return
        if await self._wait_settled(upload_id):  # another PATCH has just ended: read its outcome
            self.upload = self.store.get_upload(upload_id)
        if self.request.method != "PATCH":
            return
        if self.services.upload_busy.get(upload_id) is not None:
            raise errors.conflict("upload_busy", "another PATCH of this upload is still receiving; HEAD and retry")
        if self.request.headers.get("Content-Type") != "application/offset+octet-stream":
            raise ApiError(415, "unsupported_media_type", "PATCH needs Content-Type: application/offset+octet-stream")
        offset = _non_negative(self.request.headers.get("Upload-Offset"), "Upload-Offset")
        if offset != self.upload.offset:
            raise errors.conflict("offset_mismatch", f"the upload is at offset {self.upload.offset}")
        self.accept_body(self.upload.length - offset)  # Tornado stops a body that goes past Upload-Length
        self._checksum = self._requested_checksum()
        try:  # the whole file's digest, if this PATCH completes the upload
            self._final_digest = parse_repr_digest(self.request.headers.get("Repr-Digest"))
        except ValueError as exc:
            raise errors.bad_request("invalid_digest", f"Repr-Digest: {exc}") from None
        self.take_upload_slot()
        self.services.upload_busy[upload_id] = RECEIVING  # before the first await: one PATCH at a time
        self._marked = True  # cleared by on_finish / on_connection_close if this PATCH never starts
        self._whole_hash = await self._resume_hash()
        self._hash_at_start = self._whole_hash.copy()
        try:
            self._file = open(self.temp_path(self.upload), "r+b", buffering=0)
        except FileNotFoundError:
            self.release_upload_slot()
            raise errors.not_found("upload_not_found", "the upload's data is gone; create a new upload") from None
        self._file.seek(offset)
        self._file.truncate()
        hashers = (self._whole_hash,) if self._request_hash is None else (self._whole_hash, self._request_hash)
        self._writer = self.services.receive_writer(self._file.fileno(), hashers, batch_bytes=BATCH_BYTES,
                                   max_in_flight_bytes=IN_FLIGHT_BYTES, direct=self.config.storage.direct_io,
                                   name="tus-writer")
        self._settled = False
        self.request.connection.set_body_timeout(self.config.server.timeout)

    async def data_received(self, chunk: bytes) -> None:
        self.services.metrics.bytes_received.inc(len(chunk))
        if self._settled or self._write_error is not None:
            return  # settling after a cut connection, or a write failed: the rest of the body is dropped
        self._received += len(chunk)
        try:
            await self._writer.awrite(chunk)
        except OSError as exc:  # raising here would close the connection unanswered: patch() answers 507
            self._write_error = exc

    async def patch(self, upload_id: str) -> None:
        write_error = self._write_error
        try:
            await self._writer.afinish()
        except OSError as exc:
            write_error = write_error or exc
        if self._checksum is not None and (write_error or self._request_hash.digest() != self._checksum[1]):
            await self._start_settle(keep=False)  # a PATCH that cannot be verified whole is dropped whole
            if write_error is None:
                raise ApiError(460, "checksum_mismatch", "Upload-Checksum does not match the PATCH body")
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
        self.store.delete_upload(self.upload.id)
        self.services.upload_hashes.pop(self.upload.id, None)
        self.temp_path(self.upload).unlink(missing_ok=True)
        self.set_status(204)
        self.finish()

    def on_connection_close(self) -> None:
        if not self._settled:  # a cut PATCH: keep what reached the file unless it was to be checksummed
            self._start_settle(keep=self._checksum is None)
        self._unmark()

    def on_finish(self) -> None:
        if not self._settled:
            self._start_settle(keep=False)
        self._unmark()

    def _unmark(self) -> None:
        """Drop our RECEIVING marker if the PATCH ended before its body started (an error in prepare)."""
        if self._marked and self._settled:
            self._marked = False
            busy = self.services.upload_busy
            if busy.get(self.upload.id) is RECEIVING:
                del busy[self.upload.id]

    async def _complete(self) -> None:
        digest = self._whole_hash.digest()
        expected = {self.upload.sha256, self._final_digest.hex() if self._final_digest else None} - {None}
        if any(digest.hex() != wanted for wanted in expected):
            self.store.delete_upload(self.upload.id)
            self.services.upload_hashes.pop(self.upload.id, None)
            self.temp_path(self.upload).unlink(missing_ok=True)
            raise errors.bad_request("digest_mismatch", "the uploaded file's SHA-256 differs from the declared one"
                                                        " (metadata or Repr-Digest); create a new upload")
        if self.upload.kind == "source":
            await self._create_job(digest)
        else:
            await self.commit_output(self.upload.job_id, self.temp_path(self.upload), self.upload.length, digest)
        self.store.delete_upload(self.upload.id)
        self.services.upload_hashes.pop(self.upload.id, None)

    async def _create_job(self, digest: bytes) -> None:
        """A complete source upload becomes its job: the file moves to incoming/, the job points at it."""
        upload, root = self.upload, self.config.storage.root
        temp = self.temp_path(upload)
        await fsync_path(temp)
        source = root / INCOMING_DIR / f"{uuid.uuid4().hex[:16]}{source_extension(upload.filename or '')}"
        place_new(temp, source)
        outputs = ([resolve_in_root(root, upload.output_path, "output_path")] if upload.output_path
                   else default_outputs(root, upload.filename or "", upload.profile, upload.job_id))
        try:
            job = insert_job(self.store, self.config, job_id=upload.job_id, source=source, outputs=outputs,
                             profile=upload.profile, sha256=digest)
        except Exception:
            source.unlink(missing_ok=True)
            raise
        self.services.metrics.jobs_submitted.inc()
        self.services.dispatcher.notify()
        self.set_header("Converter-Job-Id", job.id)

    def _start_settle(self, *, keep: bool) -> "asyncio.Future[int]":
        """Mark this PATCH as ending (at once, so it ends once) and settle it; others wait on the future."""
        self._settled = True
        self.release_upload_slot()
        settling = asyncio.ensure_future(self._settle(keep=keep))
        self._marked = False  # the marker is now the settling future, removed when it is done
        busy = self.services.upload_busy
        busy[self.upload.id] = settling
        settling.add_done_callback(lambda _f: busy.pop(self.upload.id, None) if busy.get(self.upload.id)
                                   is settling else None)
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
        self._expires_at = self.new_expiry()
        self.store.set_upload_offset(self.upload.id, offset, self._expires_at)
        self.services.upload_hashes[self.upload.id] = (offset, self._whole_hash if keep else self._hash_at_start)
        return offset

    async def _wait_settled(self, upload_id: str) -> bool:
        """If a PATCH of this upload is settling, wait for it (bounded); True if one was."""
        settling = self.services.upload_busy.get(upload_id)
        if settling is None or settling is RECEIVING:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(settling), SETTLE_WAIT)
        except asyncio.TimeoutError:
            raise ApiError(503, "upload_busy", "the previous PATCH is still being stored",
                           headers={"Retry-After": "5"}) from None
        except Exception:  # noqa: BLE001 - its outcome is whatever the store now says
            pass
        return True

    def _requested_checksum(self) -> tuple[str, bytes] | None:
        header = self.request.headers.get("Upload-Checksum")
        if header is None:
            return None
        try:
            algorithm, digest = parse_upload_checksum(header)
        except ValueError as exc:
            raise errors.bad_request("invalid_checksum", str(exc)) from None
        if algorithm not in CHECKSUMS:
            raise errors.bad_request("unsupported_checksum_algorithm", f"use one of {', '.join(CHECKSUMS)}")
        self._request_hash = CHECKSUMS[algorithm]()
        return algorithm, digest

    async def _resume_hash(self):
        """The running SHA-256 of the bytes so far: kept in memory, or re-read from disk after a restart."""
        offset, hasher = self.services.upload_hashes.get(self.upload.id, (None, None))
        if offset == self.upload.offset:
            return hasher
        path, length = self.temp_path(self.upload), self.upload.offset
        return await tornado.ioloop.IOLoop.current().run_in_executor(None, _hash_prefix, path, length)


def _hash_prefix(path: Path, length: int):
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        remaining = length
        while remaining > 0 and (chunk := f.read(min(1 << 20, remaining))):
            hasher.update(chunk)
            remaining -= len(chunk)
    return hasher


def parse_metadata(header: str) -> dict[str, bytes]:
    """tus Upload-Metadata: ``key base64value,key2,key3 base64value``."""
    metadata = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            metadata[key] = base64.b64decode(value, validate=True) if value else b""
        except (binascii.Error, ValueError):
            raise errors.bad_request("invalid_metadata", f"Upload-Metadata value of {key!r} is not base64") from None
    return metadata


def metadata_text(metadata: dict[str, bytes]) -> dict[str, str]:
    """The metadata's values as text; a value that is not UTF-8 is refused, never turned into another name."""
    try:
        return {key: value.decode("utf-8") for key, value in metadata.items()}
    except UnicodeDecodeError:
        raise errors.bad_request("invalid_metadata", "Upload-Metadata values must be UTF-8 text") from None


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
        raise errors.bad_request("invalid_digest", "metadata sha256 must be a SHA-256 digest (raw or hex)")
    return digest


def _non_negative(value: str | None, name: str) -> int:
    if value is None or not DECIMAL.fullmatch(value) or len(value) > 19:
        raise errors.bad_request("invalid_header", f"{name} must be a non-negative integer")
    return int(value)


def create_empty(path: Path) -> None:
    """The upload's file, made after its row so that a refused creation leaves nothing on disk."""
    try:
        path.touch(mode=0o644)
    except OSError as exc:
        raise errors.storage_error(exc) from None


def remove_expired(store, root: Path) -> list[Upload]:
    """Uploads nobody continued before their ``Upload-Expires``: forgotten, their bytes removed."""
    expired = store.delete_expired_uploads()
    for upload in expired:
        (root / upload.temp_path).unlink(missing_ok=True)
    return expired


def remove_orphans(store, root: Path) -> int:
    """At start-up: drop uploads of jobs no longer processing, and tus temp files nothing refers to.

    A live upload's offset becomes what its file holds: bytes written before a crash of the master
    are kept (its digest is rebuilt from the file and checked at the end, so a torn tail is caught).
    """
    for upload in store.delete_orphan_uploads():
        (root / upload.temp_path).unlink(missing_ok=True)
    for upload in store.list_uploads():
        path = root / upload.temp_path
        size = path.stat().st_size if path.exists() else 0
        if size != upload.offset:
            store.set_upload_offset(upload.id, min(size, upload.length))
    known = {(root / u.temp_path).resolve() for u in store.list_uploads()}
    removed = 0
    for path in root.rglob(f"{TUS_PREFIX}*{TUS_SUFFIX}"):
        if path.resolve() not in known:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
