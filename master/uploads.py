"""Uploads in progress, from creation to the last byte: rows of the ``uploads`` table, their files, the
running SHA-256 of each tus upload, which PATCH is busy with one, and the slots of concurrent uploads.

Every file being received is named ``.converter-<kind>-<token>.part`` beside where it will end up: kind
``tus`` for a resumable upload (token: its id), ``upload`` for a multipart body (gone once the request
ends). The in-memory state is IOLoop-only (no lock) and lost on restart: a hash is then rebuilt from the
file, and ``clean_at_start`` makes the table and the files agree again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Union

import tornado.ioloop

from master import errors
from master.config import MasterConfig
from master.paths import free_bytes
from master.store import DuplicateUpload, Job, JobStore, Upload

TEMP_FILE = ".converter-{kind}-{token}.part"
TUS_KIND = "tus"
MULTIPART_KIND = "upload"
TEMP_KINDS = (TUS_KIND, MULTIPART_KIND)
SETTLE_WAIT = 30.0  # how long HEAD/PATCH wait for another PATCH of the upload to settle
# How long a HEAD waits for a PATCH still receiving: a client that re-HEADs after its connection was cut
# would otherwise learn the offset from before the bytes the master is still draining from that connection.
RECEIVING_WAIT = 5.0


class _Receiving:
    """Busy marker of a PATCH whose body is still arriving; ``ended`` is set when it stops."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()


Busy = Union[_Receiving, "asyncio.Future[int]"]


def temp_file_name(kind: str, token: str) -> str:
    return TEMP_FILE.format(kind=kind, token=token)


class UploadRegistry:
    def __init__(self, config: MasterConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.root = config.storage.root
        self._hashes: dict[str, tuple[int, "hashlib._Hash"]] = {}  # upload id → (offset, SHA-256 up to it)
        self._busy: dict[str, Busy] = {}  # upload id → RECEIVING, or the future of its settling PATCH
        self._slots_in_use = 0

    # -- slots: how many bodies stream in at once ---------------------------------------------------

    def take_slot(self) -> None:
        if self._slots_in_use >= self.config.server.max_concurrent_uploads:
            raise errors.TOO_MANY_UPLOADS.error()
        self._slots_in_use += 1

    def release_slot(self) -> None:
        self._slots_in_use -= 1

    # -- files ----------------------------------------------------------------------------------------

    def temp_path(self, upload: Upload) -> Path:
        return self.root / upload.temp_path

    def open_multipart_temp(self, directory: Path) -> tuple[int, Path]:
        """A new, empty multipart temp file in ``directory`` (readable by others: it becomes the video)."""
        path = directory / temp_file_name(MULTIPART_KIND, uuid.uuid4().hex)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.fchmod(fd, 0o644)  # whatever the umask says
        return fd, path

    def require_room(self, directory: Path, length: int) -> None:
        if length > free_bytes(directory):
            raise errors.INSUFFICIENT_STORAGE.error()

    # -- creation ---------------------------------------------------------------------------------------

    def create_for_output(self, job: Job, *, worker_id: str | None, length: int, directory: Path,
                          sha256: bytes | None) -> Upload:
        """A worker's upload of ``job``'s output; it replaces the uploads of the job's earlier attempts."""
        self.require_room(directory, length)
        upload, replaced = self._create(directory, job_id=job.id, worker_id=worker_id, length=length, sha256=sha256,
                                        attempt=job.attempts)
        for old in replaced:
            self.forget(old)
        return upload

    def create_for_source(self, *, job_id: str, length: int, profile: str, output_path: str | None, filename: str,
                          sha256: bytes | None, directory: Path, priority: int | None = None) -> Upload:
        """A user's source, whose job (``job_id``, ``profile``, ``output_path``) is made once it is complete."""
        if self.store.job_exists(job_id):
            raise errors.DUPLICATE_JOB.error(f"a job with id {job_id!r} already exists")
        if length == 0:
            raise errors.INVALID_HEADER.error("a source cannot be empty")
        self.require_room(directory, length)
        try:
            upload, _ = self._create(directory, job_id=job_id, worker_id=None, length=length, sha256=sha256,
                                     kind="source", profile=profile, output_path=output_path, filename=filename,
                                     priority=priority)
        except DuplicateUpload as exc:
            raise errors.DUPLICATE_JOB.error(f"upload {exc.upload.id} is already creating job {job_id!r};"
                                             " resume it or choose another id") from None
        return upload

    def create_for_bucket_source(self, *, job_id: str, length: int, profile: str, output_path: str | None,
                                 filename: str, sha256: bytes, key: str, bucket_upload_id: str,
                                 priority: int | None = None) -> Upload:
        """A user's source sent straight to the bucket (as ``key``, multipart upload ``bucket_upload_id``); its job
        is made once every part is stored. The same rules as for a tus source: one upload per job id."""
        if self.store.job_exists(job_id):
            raise errors.DUPLICATE_JOB.error(f"a job with id {job_id!r} already exists")
        try:
            upload, _ = self.store.create_upload(
                upload_id=uuid.uuid4().hex, job_id=job_id, worker_id=None, length=length, temp_path=key,
                sha256=sha256.hex(), expires_at=self.new_expiry(), kind="source", profile=profile,
                output_path=output_path, filename=filename, bucket_upload_id=bucket_upload_id, priority=priority)
        except DuplicateUpload as exc:
            raise errors.DUPLICATE_JOB.error(f"upload {exc.upload.id} is already creating job {job_id!r};"
                                             " resume it or choose another id") from None
        return upload

    def _create(self, directory: Path, *, sha256: bytes | None, **row) -> tuple[Upload, list[Upload]]:
        """The row first, then its empty file, so that a refused creation leaves nothing on disk."""
        upload_id = uuid.uuid4().hex
        temp = directory / temp_file_name(TUS_KIND, upload_id)
        upload, replaced = self.store.create_upload(
            upload_id=upload_id, temp_path=os.path.relpath(temp, self.root.resolve()),
            sha256=sha256.hex() if sha256 else None, expires_at=self.new_expiry(), **row)
        try:
            temp.touch(mode=0o644)
        except OSError as exc:
            raise errors.storage_error(exc) from None
        self._hashes[upload.id] = (0, hashlib.sha256())
        return upload, replaced

    def new_expiry(self) -> float:
        return time.time() + self.config.jobs.upload_expiry

    # -- one PATCH at a time ----------------------------------------------------------------------------

    def is_busy(self, upload_id: str) -> bool:
        """A PATCH of the upload is receiving, or settling."""
        return self._busy.get(upload_id) is not None

    def begin_receiving(self, upload_id: str) -> None:
        """Claim the upload for a PATCH whose body is about to arrive (409 ``upload_busy`` if one is)."""
        if self._busy.get(upload_id) is not None:
            raise errors.UPLOAD_BUSY.error()
        self._busy[upload_id] = _Receiving()

    def end_receiving(self, upload_id: str) -> None:
        """Drop the claim of a PATCH that ended before its body started."""
        busy = self._busy.get(upload_id)
        if isinstance(busy, _Receiving):
            del self._busy[upload_id]
            busy.ended.set()

    def settle(self, upload_id: str, settling: "asyncio.Future[int]") -> None:
        """The PATCH's body has ended: others wait on ``settling`` until its outcome is recorded."""
        receiving = self._busy.get(upload_id)
        self._busy[upload_id] = settling
        if isinstance(receiving, _Receiving):
            receiving.ended.set()
        settling.add_done_callback(
            lambda _f: self._busy.pop(upload_id, None) if self._busy.get(upload_id) is settling else None)

    async def wait_until_received(self, upload_id: str) -> None:
        """If a PATCH of this upload is still receiving, give it ``RECEIVING_WAIT`` to end."""
        receiving = self._busy.get(upload_id)
        if isinstance(receiving, _Receiving):
            try:
                await asyncio.wait_for(receiving.ended.wait(), RECEIVING_WAIT)
            except asyncio.TimeoutError:
                pass

    async def wait_settled(self, upload_id: str) -> bool:
        """If a PATCH of this upload is settling, wait for it (bounded); True if one was."""
        settling = self._busy.get(upload_id)
        if settling is None or isinstance(settling, _Receiving):
            return False
        try:
            await asyncio.wait_for(asyncio.shield(settling), SETTLE_WAIT)
        except asyncio.TimeoutError:
            raise errors.UPLOAD_STILL_SETTLING.error() from None
        except Exception:  # noqa: BLE001 - its outcome is whatever the store now says
            pass
        return True

    async def resume_hash(self, upload: Upload) -> "hashlib._Hash":
        """The running SHA-256 of the bytes so far: kept in memory, or re-read from disk after a restart."""
        offset, hasher = self._hashes.get(upload.id, (None, None))
        if offset == upload.offset:
            return hasher
        return await tornado.ioloop.IOLoop.current().run_in_executor(
            None, _hash_prefix, self.temp_path(upload), upload.offset)

    def record_offset(self, upload: Upload, offset: int, hasher: "hashlib._Hash") -> float:
        """Where the upload's bytes end now, and their hash; pushes its expiry back, which it returns."""
        expires_at = self.new_expiry()
        self.store.set_upload_offset(upload.id, offset, expires_at)
        self._hashes[upload.id] = (offset, hasher)
        return expires_at

    # -- the end ------------------------------------------------------------------------------------------

    def completed(self, upload: Upload) -> None:
        """The store forgot the upload with the job it completed or created: forget its hash too."""
        self._hashes.pop(upload.id, None)

    def forget(self, upload: Upload) -> None:
        """Deleted, refused or replaced: row, hash and file go (a bucket upload's parts: the upload reaper)."""
        self.store.delete_upload(upload.id)
        self._hashes.pop(upload.id, None)
        self._remove_file(upload)

    def _remove_file(self, upload: Upload) -> None:
        if upload.bucket_upload_id is None:
            self.temp_path(upload).unlink(missing_ok=True)

    def remove_expired(self) -> list[Upload]:
        """Uploads nobody continued before their ``Upload-Expires``: forgotten, their bytes removed."""
        expired = self.store.delete_expired_uploads()
        for upload in expired:
            self._hashes.pop(upload.id, None)
            self._remove_file(upload)
        return expired

    def clean_at_start(self) -> int:
        """Before serving: drop uploads of jobs no longer processing, bring each live upload's offset to what
        its file holds, and remove every temp file nothing refers to (multipart ones all are). The count
        of files removed.

        Bytes written before a crash of the master are kept: the digest is rebuilt from the file and
        checked at the end, so a torn tail is caught.
        """
        for upload in self.store.delete_orphan_uploads():
            self.temp_path(upload).unlink(missing_ok=True)
        for upload in self.store.list_uploads():
            path = self.temp_path(upload)
            size = path.stat().st_size if path.exists() else 0
            if size != upload.offset:
                self.store.set_upload_offset(upload.id, min(size, upload.length))
        known = {self.temp_path(upload).resolve() for upload in self.store.list_uploads()}
        removed = 0
        for kind in TEMP_KINDS:
            for path in self.root.rglob(temp_file_name(kind, "*")):
                if path.resolve() not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def _hash_prefix(path: Path, length: int) -> "hashlib._Hash":
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        remaining = length
        while remaining > 0 and (chunk := f.read(min(1 << 20, remaining))):
            hasher.update(chunk)
            remaining -= len(chunk)
    return hasher
