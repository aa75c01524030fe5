"""Uploading a source to create a job, downloading a job's output: streamed, with progress, restartable.

Upload: a tus upload to ``/api/uploads`` with the job's id and profile in its metadata; a cut
transfer resumes from the master's offset, and the master creates the job once the file is in
(its SHA-256 checked). The job id is chosen here, so a retry can never create a second job.

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
from pathlib import Path
from typing import Any, Callable

import requests

from converter_common.digest import parse_repr_digest
from converterctl.client import Client, quote_id
from converterctl.errors import ApiError, Failed, Unreachable
from converterctl.progress import TransferBar

READ_SIZE = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
RESUMABLE_CONFLICTS = {"offset_mismatch", "upload_busy"}  # 409s after a cut: HEAD again, then resume
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


def upload_source(client: Client, path: Path, fields: dict[str, str], *, attempts: int = 3,
                  show_progress: bool = True) -> dict[str, Any]:
    """Create a job from the local file ``path`` over the master's tus endpoint; returns the job.

    ``fields`` holds the job's ``id`` and ``profile`` (and maybe ``output_path``). A cut transfer
    resumes from the offset the master reports (HEAD); the master checks the whole file's SHA-256
    and creates the job when the last byte is in.
    """
    size = path.stat().st_size
    metadata = {**fields, "filename": path.name, "sha256": _file_sha256(path)}
    location: str | None = None
    last: Unreachable | ApiError | None = None
    for _attempt in range(attempts):
        try:
            if location is None:
                location = _create_upload(client, size, metadata)
                offset = 0
            else:
                offset = int(client.request("HEAD", location, headers=TUS).headers["Upload-Offset"])
            progress = TransferBar(f"upload {path.name}", size, enabled=show_progress)
            progress.update(offset)
            body = FileTail(path, offset, progress.update)
            try:
                client.request("PATCH", location, data=body, read_timeout=TRANSFER_TIMEOUT, headers={
                    **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
            finally:
                body.close()
            progress.close()
            return client.job(fields["id"])
        except Unreachable as exc:
            last = exc
        except ApiError as exc:
            if exc.code not in RESUMABLE_CONFLICTS:
                raise
            last = exc  # the master was still settling the cut request: ask again where it stands
            time.sleep(0.5)
    raise last


def _create_upload(client: Client, size: int, metadata: dict[str, str]) -> str:
    encoded = ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items() if value)
    response = client.request("POST", "/api/uploads", headers={**TUS, "Upload-Length": str(size),
                                                                "Upload-Metadata": encoded})
    return response.headers["Location"]


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
