"""The worker's side of the HTTP protocol with the master (requests)."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import requests.adapters

from prometheus_client import CollectorRegistry

from converter_common.digest import file_sha256, parse_repr_digest, repr_digest
from converter_common.ratelimit import TokenBucket, bucket_for
from worker.errors import ApiRejected, Cause, JobLost, MasterUnreachable, RetryableError, Shutdown
from worker.hashing import HashingWriter
from worker.metrics import WorkerMetrics
from worker.bodies import FileRangeBody, MultipartFileBody
from worker.progress import TransferProgress
from worker.retry import RetryPolicy

log = logging.getLogger("converter.worker")

CONNECT_TIMEOUT = 10.0
CONTROL_TIMEOUT = 30.0  # register, heartbeat, fail, release
UPLOAD_FIELD = "video"
UPLOAD_BLOCK = 1 << 20
# Answers that mean "this job is not yours to work on any more".
JOB_GONE_CODES = {"job_not_found", "invalid_job_state", "not_lease_owner"}
# tus 409s that a fresh HEAD resolves: another PATCH of ours is still settling, or our offset is stale.
TUS_RETRY_CODES = {"offset_mismatch", "upload_busy"}
# What a proxy in front of the master (or the master itself, when busy) answers while it cannot serve.
AWAY_STATUSES = {502, 503, 504}
# Longest wait between two tries to deliver a finished output while the master is away.
OUTPUT_KEPT_MAX_DELAY = 30.0
ERROR_BODY_CHARS = 200


TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
# The last bytes of a tus upload go in a PATCH of their own that carries the whole file's Repr-Digest:
# the digest is computed while the rest is sent, instead of in a read of the whole file beforehand.
TUS_TAIL = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass
class PartialDownload:
    """What survives between attempts of one download: the bytes on disk, their running hash, the version."""

    path: Path
    offset: int = 0
    etag: str | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def restart(self) -> None:
        self.offset, self.etag, self.hasher = 0, None, hashlib.sha256()
        self.path.unlink(missing_ok=True)


@dataclass
class TusUpload:
    """A resumable upload across attempts: where it lives on the master once created, and the running hash.

    ``sha256`` is the whole file's digest when it was computed up front (small files; it then goes in the
    metadata); otherwise ``hasher`` covers the file's first ``hashed`` bytes as they were read for sending.
    """

    path: Path
    size: int
    sha256: bytes | None = None
    location: str | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    hashed: int = 0

    def hash_up_to(self, offset: int) -> None:
        """Make ``hasher`` cover exactly ``[0, offset)``, the part the master holds, reading what it lacks."""
        if self.hashed == offset:
            return
        if self.hashed > offset:  # the master kept less than it had acknowledged: hash from the start
            self.hasher, self.hashed = hashlib.sha256(), 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.hashed)
            while self.hashed < offset and (block := f.read(min(UPLOAD_BLOCK, offset - self.hashed))):
                self.hasher.update(block)
                self.hashed += len(block)


class LargeBlockAdapter(requests.adapters.HTTPAdapter):
    """urllib3 reads a streamed request body ``blocksize`` bytes at a time; its 16 KiB default is CPU-bound."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = UPLOAD_BLOCK
        super().init_poolmanager(*args, **kwargs)


class MasterClient:
    def __init__(self, base_url: str, worker_id: str, *, retry: RetryPolicy, chunk_size: int = 1 << 20,
                 download_timeout: float = 1800.0, upload_timeout: float = 1800.0,
                 progress_interval: float = 5.0, metrics: WorkerMetrics | None = None, token: str | None = None,
                 download_limit: int = 0, upload_limit: int = 0, direct_io: bool = True, upload_window: float = 0.0):
        self.base_url = base_url.rstrip("/")
        self.worker_id = worker_id
        self.retry = retry
        # retry.upload_window: how long a finished output is kept and its delivery retried while the master is away
        self.output_kept = retry.within(upload_window, cap=OUTPUT_KEPT_MAX_DELAY) if upload_window > 0 else None
        self.chunk_size = chunk_size
        self.download_timeout = download_timeout
        self.upload_timeout = upload_timeout
        self.progress_interval = progress_interval
        self.direct_io = direct_io
        self.metrics = metrics or WorkerMetrics(CollectorRegistry())
        self._token = token
        # transfer.download_limit / upload_limit (bytes/s, 0 = unlimited): one bucket per direction, shared by
        # the worker's slots, so the limit holds for the worker as a whole
        self.download_bucket: TokenBucket | None = bucket_for(download_limit)
        self.upload_bucket: TokenBucket | None = bucket_for(upload_limit)
        self._local = threading.local()  # a requests.Session is not safe to share across threads

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = LargeBlockAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["X-Worker-Id"] = self.worker_id
            if self._token:
                session.headers["Authorization"] = f"Bearer {self._token}"
            self._local.session = session
        return session

    # -- control calls --------------------------------------------------------------------------

    def register(self, capabilities: dict[str, Any], concurrency: int, hostname: str) -> dict[str, Any]:
        return self._control("POST", "/api/worker/register", {
            "worker_id": self.worker_id, "hostname": hostname, "capabilities": capabilities,
            "concurrency": concurrency})

    def claim(self, wait: float, cache_free_bytes: int | None = None) -> dict[str, Any] | None:
        """The next job for this worker, waiting up to ``wait`` seconds for one; None if none came.

        With ``cache_free_bytes`` the master only hands out a job whose source (and output) fit.
        """
        body: dict[str, Any] = {"worker_id": self.worker_id, "wait": wait}
        if cache_free_bytes is not None:
            body["cache_free_bytes"] = cache_free_bytes
        response = self._request("POST", "/api/worker/claim", json=body,
                                 timeout=(CONNECT_TIMEOUT, wait + CONTROL_TIMEOUT))
        if response.status_code == 204:
            return None
        return _json_or_raise(response)

    def heartbeat(self, job_id: str, progress: float | None, conversion: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
        body: dict[str, Any] = {"worker_id": self.worker_id, "progress": progress}
        if conversion is not None:
            body["conversion"] = conversion
        return self._control("POST", "/api/worker/heartbeat", body, job_id=job_id)

    def fail(self, job_id: str, error: str, *, retryable: bool, cause: Cause) -> dict[str, Any]:
        """Report a failed attempt; only ``cause`` worker counts toward this worker's quarantine."""
        return self.retry.call(lambda: self._control("POST", "/api/worker/fail", {
            "worker_id": self.worker_id, "error": error, "retryable": retryable, "cause": cause.value},
            job_id=job_id), what=f"report failure of job {job_id}")

    def complete_shared(self, job_id: str, size: int, sha256_hex: str, cancel: threading.Event | None = None
                        ) -> dict[str, Any]:
        """Shared-storage mode: the output is on the shared mount; ask the master to verify and commit it."""
        def complete() -> dict[str, Any]:
            return self.retry.call(lambda: self._control("POST", "/api/worker/complete", {
                "worker_id": self.worker_id, "size": size, "sha256": sha256_hex}, job_id=job_id),
                what=f"completion of job {job_id}")

        return self._keeping_output(complete, job_id, cancel)

    def release(self, job_id: str, reason: str) -> dict[str, Any]:
        return self.retry.call(lambda: self._control("POST", "/api/worker/release", {
            "worker_id": self.worker_id, "reason": reason}, job_id=job_id), what=f"release job {job_id}")

    # -- transfers ------------------------------------------------------------------------------

    def download_source_video(self, job_id: str, path: Path, cancel: threading.Event | None = None) -> int:
        """Stream the job's source into ``path``, verifying its SHA-256 while it arrives.

        A cut transfer resumes from the bytes already on disk (Range + If-Range on the ETag); a digest
        mismatch starts over. Retried per the policy; no partial file survives a final failure.
        """
        partial = PartialDownload(path)
        try:
            return self._transfer("download", job_id, lambda: self._download_once(job_id, partial, cancel), cancel)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def upload_resumable(self, job_id: str, path: Path, cancel: threading.Event | None = None) -> int:
        """Upload ``path`` as the job's output over tus: a cut transfer resumes at the offset the master reports.

        The file is hashed while it is sent; the last ``TUS_TAIL`` bytes go in a second PATCH carrying the
        whole file's SHA-256 as ``Repr-Digest``, which the master verifies before the rename. (A file of at
        most ``TUS_TAIL`` bytes is hashed first and its digest put in the upload's metadata.)
        """
        size = path.stat().st_size
        upload = TusUpload(path, size, file_sha256(path) if size <= TUS_TAIL else None)
        return self._transfer("upload", job_id, lambda: self._tus_attempt(job_id, upload, cancel), cancel)

    def upload_converted_video(self, job_id: str, path: Path, cancel: threading.Event | None = None) -> int:
        """Upload ``path`` as the job's output (multipart field ``video``); returns the size the master stored."""
        digest = file_sha256(path)
        return self._transfer("upload", job_id, lambda: self._upload_once(job_id, path, digest, cancel), cancel)

    def _transfer(self, direction: str, job_id: str, attempt, cancel: threading.Event | None) -> int:
        """Run one transfer under the retry policy, counting retries and final failures by direction.

        An upload carries a finished output, so it is also kept trying while the master is away.
        """
        def transfer() -> int:
            return self.retry.call(attempt, what=f"{direction} of job {job_id}",
                                   on_retry=lambda _exc: self.metrics.transfer_retries.labels(direction).inc())

        try:
            return self._keeping_output(transfer, job_id, cancel) if direction == "upload" else transfer()
        except (RetryableError, ApiRejected):
            self.metrics.transfer_failures.labels(direction).inc()
            raise

    def _keeping_output(self, deliver, job_id: str, cancel: threading.Event | None):
        """Run ``deliver`` again, with capped backoff, while it fails only because the master is away,
        for up to ``retry.upload_window`` seconds: the output cost a conversion. Any answer from the
        master (job gone, refused) or ``cancel`` ends it sooner."""
        if self.output_kept is None:
            return deliver()
        return self.output_kept.call(deliver, what=f"keeping the output of job {job_id}: delivery",
                                     retry_on=MasterUnreachable, cancel=cancel)

    def _download_once(self, job_id: str, partial: PartialDownload, cancel: threading.Event | None) -> int:
        headers = {}
        if partial.offset and partial.etag:
            headers = {"Range": f"bytes={partial.offset}-", "If-Range": partial.etag}
        with self._request("GET", "/api/worker/download-video", job_id=job_id, stream=True, headers=headers,
                           timeout=(CONNECT_TIMEOUT, self.download_timeout)) as response:
            _raise_for_status(response)
            total = self._resume_point(response, partial)
            expected_digest = _digest_header(response)
            partial.etag = response.headers.get("ETag")
            progress = self._progress("download", job_id, total)
            progress.done = partial.offset
            writer = HashingWriter(open(partial.path, "ab" if partial.offset else "wb", buffering=0), partial.hasher,
                                   direct=self.direct_io)
            start, bucket = partial.offset, self.download_bucket
            try:
                for chunk in response.iter_content(self.chunk_size):
                    if cancel is not None and cancel.is_set():
                        raise Shutdown("download cancelled")
                    writer.write(chunk)
                    partial.offset += len(chunk)
                    progress.add(len(chunk))
                    if bucket is not None:
                        bucket.consume(len(chunk))
            except requests.RequestException as exc:
                raise RetryableError(f"download of job {job_id} cut at byte {partial.offset}: "
                                     f"{exc.__class__.__name__}") from exc
            finally:
                try:
                    writer.close()
                except OSError:
                    partial.restart()  # the hash saw bytes the file did not get: no resuming from here
                    raise
                partial.offset = start + writer.written
        if total is not None and partial.offset != total:
            raise RetryableError(f"download of job {job_id}: got {partial.offset} of {total} bytes")
        if expected_digest is not None and partial.hasher.digest() != expected_digest:
            partial.restart()
            raise RetryableError(f"download of job {job_id}: SHA-256 mismatch, downloading again")
        self._finish(progress, "download")
        return partial.offset

    @staticmethod
    def _resume_point(response: requests.Response, partial: PartialDownload) -> int | None:
        """Total size of the source; restarts ``partial`` unless the master resumed it where it stood."""
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == partial.offset:
                return int(match.group(3))
            raise RetryableError("master resumed the download at another offset")
        if partial.offset:
            partial.restart()  # a 200: the master sent the whole file (new version, or no Range support)
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    def _upload_once(self, job_id: str, path: Path, digest: bytes, cancel: threading.Event | None) -> int:
        size = path.stat().st_size
        progress = self._progress("upload", job_id, size)
        body = MultipartFileBody(path, UPLOAD_FIELD, path.name, on_read=progress.add, cancel=cancel,
                                 bucket=self.upload_bucket)
        try:
            response = self._request("POST", "/api/worker/upload-video", job_id=job_id, data=body,
                                     headers={"Content-Type": body.content_type, "Repr-Digest": repr_digest(digest)},
                                     timeout=(CONNECT_TIMEOUT, self.upload_timeout))
        finally:
            body.close()
        stored = _json_or_raise(response).get("size")
        if stored != size:
            raise RetryableError(f"upload of job {job_id}: master stored {stored} bytes, sent {size}")
        self._finish(progress, "upload")
        return size

    def _progress(self, direction: str, job_id: str, total: int | None) -> TransferProgress:
        return TransferProgress(f"{direction} {job_id}", total, self.progress_interval,
                                on_bytes=self.metrics.transfer_bytes.labels(direction).inc)

    def _finish(self, progress: TransferProgress, direction: str) -> None:
        progress.finish()
        self.metrics.transfer_done(direction, progress.done, progress.elapsed)

    def _tus_attempt(self, job_id: str, upload: "TusUpload", cancel: threading.Event | None) -> int:
        offset = self._tus_offset(upload) if upload.location else None
        if offset is None:
            upload.location = self._tus_create(job_id, upload)
            offset = 0
        progress = self._progress("upload", job_id, upload.size)
        progress.done = offset
        if upload.sha256 is not None:  # digest in the metadata: one PATCH for the rest
            self._tus_patch(job_id, upload, offset, upload.size, progress, cancel)
        else:
            upload.hash_up_to(offset)
            tail = max(offset, upload.size - TUS_TAIL)
            if offset < tail:
                hasher = upload.hasher.copy()  # upload.hasher keeps matching upload.hashed if this PATCH is cut
                offset = self._tus_patch(job_id, upload, offset, tail, progress, cancel, hasher=hasher)
                upload.hasher, upload.hashed = hasher, tail
            with open(upload.path, "rb", buffering=0) as f:
                f.seek(tail)
                rest = f.read(upload.size - tail)
            digest = upload.hasher.copy()
            digest.update(rest)
            self._tus_patch(job_id, upload, tail, upload.size, progress, cancel, data=rest,
                            digest=digest.digest())
        self._finish(progress, "upload")
        return upload.size

    def _tus_patch(self, job_id: str, upload: "TusUpload", offset: int, end: int, progress: TransferProgress,
                   cancel: threading.Event | None, *, hasher=None, data: bytes | None = None,
                   digest: bytes | None = None) -> int:
        """PATCH bytes ``[offset, end)`` of the file (or ``data``); returns the master's new offset, == ``end``."""
        headers = {**TUS_HEADERS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        if digest is not None:
            headers["Repr-Digest"] = repr_digest(digest)
        if data is not None:
            if self.upload_bucket is not None:
                self.upload_bucket.consume(len(data))
            body, progress_after = data, len(data)
        else:
            body, progress_after = FileRangeBody(upload.path, offset, end - offset, on_read=progress.add,
                                                 cancel=cancel, bucket=self.upload_bucket, hasher=hasher), 0
        try:
            response = self._request("PATCH", upload.location, data=body, headers=headers,
                                     timeout=(CONNECT_TIMEOUT, self.upload_timeout))
        finally:
            if isinstance(body, FileRangeBody):
                body.close()
        if response.status_code == 400 and _error_code(response) == "digest_mismatch":
            upload.location = None  # the master dropped the upload: start a new one
            upload.hasher, upload.hashed = hashlib.sha256(), 0
            raise RetryableError(f"upload of job {job_id}: the master computed another SHA-256")
        if response.status_code == 409 and _error_code(response) in TUS_RETRY_CODES:
            raise RetryableError(f"upload of job {job_id}: master answered 409 {_error_code(response)}; "
                                 "asking it for the offset again")  # the next attempt HEADs the upload
        _raise_for_status(response)
        stored = int(response.headers.get("Upload-Offset", "-1"))
        if stored != end:
            raise RetryableError(f"upload of job {job_id}: master holds {stored} of {end} bytes")
        if progress_after:
            progress.add(progress_after)
        return stored

    def _tus_create(self, job_id: str, upload: "TusUpload") -> str:
        metadata = f"job_id {_b64(job_id.encode())},filename {_b64(upload.path.name.encode())}"
        if upload.sha256 is not None:
            metadata += f",sha256 {_b64(upload.sha256)}"
        response = self._request("POST", "/api/uploads", timeout=(CONNECT_TIMEOUT, CONTROL_TIMEOUT), headers={
            **TUS_HEADERS, "Upload-Length": str(upload.size), "Upload-Metadata": metadata})
        _raise_for_status(response)
        return response.headers["Location"]

    def _tus_offset(self, upload: "TusUpload") -> int | None:
        """Where the master's copy of the upload ends; None when the master no longer has it."""
        response = self._request("HEAD", upload.location, headers=TUS_HEADERS, timeout=(CONNECT_TIMEOUT,
                                                                                         CONTROL_TIMEOUT))
        if response.status_code in (404, 410):
            return None
        _raise_for_status(response)
        return int(response.headers["Upload-Offset"])

    # -- plumbing -------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
        return _json_or_raise(self._request(method, path, json=body, job_id=job_id, timeout=(CONNECT_TIMEOUT,
                                                                                             CONTROL_TIMEOUT)))

    def _request(self, method: str, path: str, *, job_id: str | None = None, **kwargs: Any) -> requests.Response:
        """A request to the master; ``path`` is absolute on the master (``/api/...``)."""
        params = {"job_id": job_id} if job_id is not None else None
        try:
            return self.session.request(method, self.base_url + path, params=params, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise MasterUnreachable(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise RetryableError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _error_code(response: requests.Response) -> str:
    return _master_error(response)[0]


def _digest_header(response: requests.Response) -> bytes | None:
    try:
        return parse_repr_digest(response.headers.get("Repr-Digest"))
    except ValueError as exc:
        raise RetryableError(f"master sent a malformed Repr-Digest ({exc})") from None


def _raise_for_status(response: requests.Response) -> None:
    """Raise the error type an error answer calls for, its message the master's own ``error`` and ``message``."""
    if response.status_code < 400:
        return
    code, message = _master_error(response)
    answer = f"master answered {response.status_code} {code}: {message}"
    if response.status_code in AWAY_STATUSES:
        raise MasterUnreachable(answer)
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise RetryableError(answer)
    if code in JOB_GONE_CODES:
        raise JobLost(response.status_code, code, message)
    raise ApiRejected(response.status_code, code, message)


def _master_error(response: requests.Response) -> tuple[str, str]:
    """The master's ``{"error", "message"}``; for any other body, its start (or the status's reason)."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("error"):
        return str(payload["error"]), str(payload.get("message") or "(no message)")
    return "http_error", _body_start(response) or response.reason or "(empty body)"


def _body_start(response: requests.Response) -> str:
    return " ".join(response.text[:ERROR_BODY_CHARS].split())


def _json_or_raise(response: requests.Response) -> dict[str, Any]:
    _raise_for_status(response)
    try:
        payload = response.json()
    except ValueError as exc:
        raise RetryableError(f"master sent a non-JSON answer ({response.status_code}): "
                             f"{_body_start(response) or '(empty body)'}") from exc
    if not isinstance(payload, dict):
        raise RetryableError(f"master sent an unexpected answer ({response.status_code}): {_body_start(response)}")
    return payload
