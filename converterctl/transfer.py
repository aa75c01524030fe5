"""Uploading a source to create a job, downloading a job's output: streamed, with progress, restartable.

Upload: a tus upload to ``/api/uploads`` with the job's id and profile in its metadata; a cut
transfer resumes from the master's offset, and the master creates the job once the file is in
(its SHA-256 checked). The job id is chosen here, so a retry can never create a second job. The
upload's URL and job id are remembered (``upload_state``) until the job exists, so running the same
command again, after a kill or after the retries ran out, resumes the upload instead of starting over.

Download: ``GET /api/jobs/<id>/output`` into ``FILE.part``, the version's ETag kept beside it in
``FILE.part.etag``. A cut transfer, in this run or a later one, resumes with ``Range`` +
``If-Range``; the whole file is checked against ``Repr-Digest`` before it is renamed to ``FILE``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import requests

from converter_common.digest import parse_repr_digest
from converterctl.client import Client, quote_id
from converterctl.errors import ApiError, CliError, Failed, Unreachable
from converterctl.progress import TransferBar
from converterctl.retry import UPLOAD_RETRY, RetryPolicy
from converterctl.upload_state import RememberedUpload, UploadKey, UploadStateFile, parse_upload_expires

READ_SIZE = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
RESUMABLE_CONFLICTS = {"offset_mismatch", "upload_busy"}  # 409s after a cut: HEAD again, then resume
UPLOAD_GONE = {404, 410}  # a remembered upload the master no longer has (completed, expired, cleaned up)
TRANSFER_TIMEOUT = 300.0  # seconds without a byte moving before a transfer counts as cut
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class FileTail:
    """The bytes of ``path`` from ``offset`` on, read 1 MiB at a time by requests (a streamed body)."""

    def __init__(self, path: Path, offset: int, on_read: Callable[[int], None]):
        self._path, self._offset = path, offset
        self._length = path.stat().st_size - offset
        self._file = None
        self._on_read = on_read

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._file is None:
            self._file = open(self._path, "rb", buffering=0)
            self._file.seek(self._offset)
        data = self._file.read(size if size and size > 0 else READ_SIZE)
        if data:
            self._on_read(len(data))
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class SourceRequest:
    """The job a source upload asks for; when None, the master chooses ``output_path`` and converterctl ``job_id``."""

    profile: str
    output_path: str | None = None
    job_id: str | None = None


def upload_source(client: Client, path: Path, request: SourceRequest, state: UploadStateFile, *,
                  resume: bool = True, retry: RetryPolicy = UPLOAD_RETRY, show_progress: bool = True,
                  notify: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Create a job from the local file ``path`` over the master's tus endpoint; returns the job.

    The upload an earlier run of the same command left unfinished (``state``) is resumed unless
    ``resume`` is False. A cut transfer or an absent master is retried with ``retry``'s backoff, its
    count starting over whenever the master's offset moved forward; ``notify`` hears of each wait.
    """
    upload = SourceUpload(client, path, request, state, resume=resume)
    failures, reached = 0, upload.offset
    while True:
        try:
            return upload.send(show_progress)
        except (Unreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.code not in RESUMABLE_CONFLICTS:
                raise
            failures = 1 if upload.offset > reached else failures + 1
            reached = upload.offset
            if retry.exhausted(failures):
                raise _given_up(exc, upload, failures) from None
            delay = retry.delay(failures)
            notify(f"{exc}; retrying in {delay:g} s (try {failures + 1} of {retry.attempts})")
            retry.sleep(delay)


def _given_up(exc: CliError, upload: "SourceUpload", tries: int) -> CliError:
    if not isinstance(exc, Unreachable) or upload.current is None:
        return exc
    return Unreachable(f"{exc} (gave up after {tries} tries in a row; run the same command again to resume the upload)")


class SourceUpload:
    """One source upload on the master: the remembered one resumed, or a new one created, then sent to the end.

    The master creates the job when the last byte is in; the job id is chosen here (or remembered), so
    neither a retry nor a second run can create a second job.
    """

    def __init__(self, client: Client, path: Path, request: SourceRequest, state: UploadStateFile, *, resume: bool):
        self.client, self.path, self.request, self.state = client, path, request, state
        self.key = UploadKey.of(client.base_url, path, request.profile, request.output_path, request.job_id)
        remembered = state.lookup(self.key)
        self.current: RememberedUpload | None = remembered if resume else None
        self._abandoned = None if resume else remembered
        self.job_id = request.job_id or (self.current.job_id if self.current else uuid.uuid4().hex[:16])
        self.offset = 0  # the master's offset when this attempt began

    def send(self, show_progress: bool) -> dict[str, Any]:
        self._terminate_abandoned()
        if self.current is not None:
            job = self._resume()
            if job is not None:
                return job
        if self.current is None:
            self._create()
        self._patch(show_progress)
        self.state.forget(self.key)
        return self.client.job(self.job_id)

    @cached_property
    def sha256(self) -> str:
        return _file_sha256(self.path)

    def _create(self) -> None:
        metadata = {"profile": self.request.profile, "id": self.job_id, "output_path": self.request.output_path or "",
                    "filename": self.path.name, "sha256": self.sha256}
        encoded = ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()
                           if value)
        response = self.client.request("POST", "/api/uploads", headers={
            **TUS, "Upload-Length": str(self.key.size), "Upload-Metadata": encoded})
        self.current = RememberedUpload(response.headers["Location"], self.job_id, time.time(),
                                        parse_upload_expires(response.headers.get("Upload-Expires")))
        self.offset = 0
        self.state.remember(self.key, self.current)

    def _resume(self) -> dict[str, Any] | None:
        """Ask the master where the upload stands; the job if the upload already became one."""
        try:
            response = self.client.request("HEAD", self.current.location, headers=TUS)
        except ApiError as exc:
            if exc.status not in UPLOAD_GONE:
                raise
            return self._gone()
        self.offset = int(response.headers["Upload-Offset"])
        self._note_expiry(parse_upload_expires(response.headers.get("Upload-Expires")))
        return None

    def _gone(self) -> dict[str, Any] | None:
        """The master no longer has the upload: it completed (an earlier run died before hearing so), or expired."""
        job = self._job_made_from_this_file()
        if job is None:
            self.current, self.offset = None, 0
        else:
            self.state.forget(self.key)
        return job

    def _job_made_from_this_file(self) -> dict[str, Any] | None:
        try:
            job = self.client.job(self.job_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return None
        return job if job.get("source_sha256") == self.sha256 else None

    def _note_expiry(self, expires_at: float | None) -> None:
        if expires_at is not None and expires_at != self.current.expires_at:
            self.current = replace(self.current, expires_at=expires_at)
            self.state.remember(self.key, self.current)

    def _terminate_abandoned(self) -> None:
        """``--no-resume``: delete the remembered upload (tus termination) so its job id is free again."""
        if self._abandoned is None:
            return
        try:
            self.client.request("DELETE", self._abandoned.location, headers=TUS)
        except ApiError:
            pass  # already gone, or not ours to delete: the new upload goes ahead either way
        self.state.forget(self.key)
        self._abandoned = None

    def _patch(self, show_progress: bool) -> None:
        progress = TransferBar(f"upload {self.path.name}", self.key.size, enabled=show_progress)
        progress.start_at(self.offset)
        body = FileTail(self.path, self.offset, progress.update)
        try:
            self.client.request("PATCH", self.current.location, data=body, read_timeout=TRANSFER_TIMEOUT, headers={
                **TUS, "Upload-Offset": str(self.offset), "Content-Type": "application/offset+octet-stream"})
        finally:
            body.close()
            progress.close()


def _file_sha256(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class PartialFile:
    """``FILE.part`` and ``FILE.part.etag``: the bytes so far and the version they belong to."""

    def __init__(self, destination: Path):
        self.path = destination.with_name(destination.name + ".part")
        self.etag_path = destination.with_name(destination.name + ".part.etag")

    def resume_point(self) -> tuple[int, str | None]:
        if not self.path.exists() or not self.etag_path.exists():
            self.discard()
            return 0, None
        return self.path.stat().st_size, self.etag_path.read_text().strip() or None

    def digest_so_far(self, length: int):
        hasher = hashlib.sha256()
        with open(self.path, "rb", buffering=0) as f:
            while length > 0:
                chunk = f.read(min(READ_SIZE, length))
                if not chunk:
                    break
                hasher.update(chunk)
                length -= len(chunk)
        return hasher

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.etag_path.unlink(missing_ok=True)


def download_output(client: Client, job_id: str, destination: Path, *, attempts: int = 3,
                    show_progress: bool = True) -> int:
    """Fetch the job's output into ``destination``, resuming any ``.part`` left; returns its size."""
    partial = PartialFile(destination)
    last: Unreachable | None = None
    for _ in range(attempts):
        try:
            size = _download_once(client, job_id, partial, show_progress)
        except Unreachable as exc:
            last = exc
            continue
        os.replace(partial.path, destination)
        partial.etag_path.unlink(missing_ok=True)
        return size
    raise Unreachable(f"{last} (the partial file {partial.path.name} is kept; run the command again to resume)")


def _download_once(client: Client, job_id: str, partial: PartialFile, show_progress: bool) -> int:
    offset, etag = partial.resume_point()
    headers = {"Range": f"bytes={offset}-", "If-Range": etag} if offset and etag else {}
    try:
        response = client.request("GET", f"/api/jobs/{quote_id(job_id)}/output", headers=headers, stream=True,
                                  read_timeout=TRANSFER_TIMEOUT)
    except ApiError as exc:
        if exc.status != 416:
            raise
        partial.discard()  # the part is longer than the file: another version, start over
        return _download_once(client, job_id, partial, show_progress)
    with response:
        offset = _start_offset(response, offset)
        expected = parse_repr_digest(response.headers.get("Repr-Digest"))
        total = offset + int(response.headers.get("Content-Length", "0"))
        hasher = partial.digest_so_far(offset) if offset else hashlib.sha256()
        partial.etag_path.write_text(response.headers.get("ETag", ""))
        progress = TransferBar(f"download {job_id}", total, enabled=show_progress)
        progress.start_at(offset)
        _receive(response, partial.path, offset, hasher, progress)
        progress.close()
    if progress.done != total:
        raise Unreachable(f"the connection closed after {progress.done} of {total} bytes")
    if expected is not None and hasher.digest() != expected:
        partial.discard()
        raise Failed(f"the downloaded output of job {job_id} does not match its Repr-Digest; removed it")
    return total


def _start_offset(response: requests.Response, offset: int) -> int:
    """Where the body starts: ``offset`` for a 206 that continues the part, 0 for a whole new copy."""
    if response.status_code != 206:
        return 0
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        raise Failed(f"the master sent an unexpected range ({response.headers.get('Content-Range')!r})")
    return offset


def _receive(response: requests.Response, path: Path, offset: int, hasher, progress: TransferBar) -> None:
    mode = "r+b" if offset else "wb"
    with open(path, mode, buffering=0) as out:
        out.truncate(offset)
        out.seek(offset)
        try:
            for chunk in response.iter_content(READ_SIZE):
                out.write(chunk)
                hasher.update(chunk)
                progress.update(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise Unreachable(f"the download was cut ({type(exc).__name__})") from None
