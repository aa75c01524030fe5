"""/api/uploads: resumable uploads of a job's output, speaking tus 1.0.0.

Extensions: creation, checksum (sha1, sha256 per PATCH), termination. Upload-Metadata carries
``job_id`` (required) and ``sha256`` (the whole file's digest, raw or hex; verified before the
rename). The bytes of a cut PATCH are kept, so the client resumes from the offset HEAD reports;
with Upload-Checksum a cut or mismatching PATCH is discarded whole (it cannot be verified).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import uuid
from pathlib import Path

import tornado.ioloop
import tornado.web

from converter_common.digest import parse_upload_checksum
from master import errors
from master.auth import Access
from master.errors import ApiError
from master.handlers.base import check_job_id
from master.handlers.receiving import ReceivingHandler
from master.paths import free_bytes, resolve_in_root
from master.store import Upload

TUS_VERSION = "1.0.0"
TUS_PREFIX = ".converter-tus-"
TUS_SUFFIX = ".part"
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
WRITE_BUFFER = 1 << 20


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
        self.set_header("Tus-Extension", "creation,checksum,termination")
        self.set_header("Tus-Checksum-Algorithm", ",".join(CHECKSUMS))
        self.set_header("Tus-Max-Size", str(self.config.server.max_upload_size))
        self.set_status(204)
        self.finish()

    def temp_path(self, upload: Upload) -> Path:
        return self.config.storage.root / upload.temp_path


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
            raise ApiError(413, "body_too_large", f"upload exceeds the limit of {self.config.server.max_upload_size}")
        metadata = parse_metadata(self.request.headers.get("Upload-Metadata", ""))
        job = self.processing_job(check_job_id(metadata.get("job_id", b"").decode("utf-8", "replace")))
        expected = _metadata_digest(metadata.get("sha256"))
        destination = self.output_destination(job)
        if length > free_bytes(destination.parent):
            raise ApiError(507, "insufficient_storage", "not enough free space on the master for this upload")
        upload_id = uuid.uuid4().hex
        temp = destination.parent / f"{TUS_PREFIX}{upload_id}{TUS_SUFFIX}"
        temp.touch(mode=0o644)
        upload, replaced = self.store.create_upload(
            upload_id=upload_id, job_id=job.id, worker_id=self.worker_id_header(), length=length,
            temp_path=os.path.relpath(temp, self.config.storage.root.resolve()),
            sha256=expected.hex() if expected else None)
        for old in replaced:
            self.temp_path(old).unlink(missing_ok=True)
            self.services.upload_hashes.pop(old.id, None)
        self.services.upload_hashes[upload.id] = (0, hashlib.sha256())
        if length == 0:
            await self.commit_output(job.id, temp, 0, hashlib.sha256().digest())
            self.store.delete_upload(upload.id)
        self.set_header("Location", f"/api/uploads/{upload.id}")
        self.set_status(201)
        self.finish()


@tornado.web.stream_request_body
class UploadHandler(_TusHandler):
    access = {"OPTIONS": Access.OPEN, "HEAD": Access.WORKER, "PATCH": Access.WORKER, "DELETE": Access.WORKER}

    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._file = None
        self._received = 0
        self._request_hash = None
        self._settled = True

    async def prepare(self) -> None:
        super().prepare()
        self.check_tus_version()
        if self.request.method == "OPTIONS":
            return
        self.upload = self.store.get_upload(self.path_kwargs["upload_id"])
        self.processing_job(self.upload.job_id)
        if self.request.method != "PATCH":
            return
        if self.request.headers.get("Content-Type") != "application/offset+octet-stream":
            raise ApiError(415, "unsupported_media_type", "PATCH needs Content-Type: application/offset+octet-stream")
        offset = _non_negative(self.request.headers.get("Upload-Offset"), "Upload-Offset")
        if offset != self.upload.offset:
            raise errors.conflict("offset_mismatch", f"the upload is at offset {self.upload.offset}")
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and offset + int(declared) > self.upload.length:
            raise ApiError(413, "body_too_large", "the PATCH goes past Upload-Length")
        self._checksum = self._requested_checksum()
        self.take_upload_slot()
        self._whole_hash = await self._resume_hash()
        self._hash_at_start = self._whole_hash.copy()
        self._file = open(self.temp_path(self.upload), "r+b", buffering=WRITE_BUFFER)
        self._file.seek(offset)
        self._file.truncate()
        self._settled = False
        self.request.connection.set_max_body_size(self.upload.length - offset)
        self.request.connection.set_body_timeout(self.config.server.timeout)

    def data_received(self, chunk: bytes) -> None:
        self.services.metrics.bytes_received.inc(len(chunk))
        if self._received + len(chunk) > self.upload.length - self.upload.offset:
            raise ApiError(413, "body_too_large", "the PATCH goes past Upload-Length")
        self._file.write(chunk)
        self._whole_hash.update(chunk)
        if self._request_hash is not None:
            self._request_hash.update(chunk)
        self._received += len(chunk)

    async def patch(self, upload_id: str) -> None:
        if self._checksum is not None and self._request_hash.digest() != self._checksum[1]:
            self._settle(keep=False)
            raise ApiError(460, "checksum_mismatch", "Upload-Checksum does not match the PATCH body")
        new_offset = self._settle(keep=True)
        if new_offset == self.upload.length:
            await self._complete()
        self.set_header("Upload-Offset", str(new_offset))
        self.set_status(204)
        self.finish()

    def head(self, upload_id: str) -> None:
        self.set_header("Upload-Offset", str(self.upload.offset))
        self.set_header("Upload-Length", str(self.upload.length))
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
        if not self._settled:  # a cut PATCH: keep what arrived unless it was to be checksummed
            self._settle(keep=self._checksum is None)

    def on_finish(self) -> None:
        if not self._settled:
            self._settle(keep=False)

    async def _complete(self) -> None:
        digest = self._whole_hash.digest()
        if self.upload.sha256 is not None and digest.hex() != self.upload.sha256:
            self.store.delete_upload(self.upload.id)
            self.services.upload_hashes.pop(self.upload.id, None)
            self.temp_path(self.upload).unlink(missing_ok=True)
            raise errors.bad_request("digest_mismatch", "the uploaded file's SHA-256 differs from the metadata's;"
                                                        " create a new upload")
        await self.commit_output(self.upload.job_id, self.temp_path(self.upload), self.upload.length, digest)
        self.store.delete_upload(self.upload.id)
        self.services.upload_hashes.pop(self.upload.id, None)

    def _settle(self, *, keep: bool) -> int:
        """End this PATCH: record the new offset and running hash, or roll both back to where it began."""
        self._settled = True
        self.release_upload_slot()
        offset = self.upload.offset + (self._received if keep else 0)
        try:
            self._file.flush()
            if not keep:
                self._file.truncate(self.upload.offset)
        except OSError:
            offset, keep = self.upload.offset, False
        finally:
            try:
                self._file.close()
            except OSError:
                pass  # a full disk: the offset stays where it was and the bytes are rewritten on resume
        self.store.set_upload_offset(self.upload.id, offset)
        self.services.upload_hashes[self.upload.id] = (offset, self._whole_hash if keep else self._hash_at_start)
        return offset

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
        except binascii.Error:
            raise errors.bad_request("invalid_metadata", f"Upload-Metadata value of {key!r} is not base64") from None
    return metadata


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
    if value is None or not value.isdigit():
        raise errors.bad_request("invalid_header", f"{name} must be a non-negative integer")
    return int(value)


def remove_orphans(store, root: Path) -> int:
    """At start-up: drop uploads of jobs no longer processing, and tus temp files nothing refers to."""
    for upload in store.delete_orphan_uploads():
        (root / upload.temp_path).unlink(missing_ok=True)
    known = {(root / u.temp_path).resolve() for u in store.list_uploads()}
    removed = 0
    for path in root.rglob(f"{TUS_PREFIX}*{TUS_SUFFIX}"):
        if path.resolve() not in known:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
