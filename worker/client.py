"""The worker's client of the master: the job protocol and the transfers, under the worker's retry policy.

``MasterClient`` keeps the calls the worker makes; the requests themselves are ``converter_client``'s
(``WorkerControl``, ``Downloader``, ``TusClient``, ``MultipartUploader`` over one ``MasterHttp``).
Here they get the worker's retries, metrics, progress logging and bandwidth limits, and what they
raise becomes the worker's errors (``worker_errors``): a job to retry, a job lost, a refusal, a shutdown.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import requests

from prometheus_client import CollectorRegistry

from converter_client.bucket import BucketTransfers, OutputDigests
from converter_client.control import WorkerControl
from converter_client.download import Downloader, PartialDownload
from converter_client.errors import (Cancelled, MasterAway, Refused, TransferError, UploadConflict, UploadDropped,
                                     body_start, error_payload)
from converter_client.multipart import MultipartUploader
from converter_client.responses import json_answer
from converter_client.transport import MasterHttp
from converter_client.tus import TUS_TAIL, TusClient, TusUpload
from converter_common import protocol
from converter_common.digest import file_sha256
from converter_common.ratelimit import TokenBucket, bucket_for
from worker.errors import ApiRejected, Cause, JobLost, MasterUnreachable, RetryableError, Shutdown
from worker.metrics import WorkerMetrics
from worker.progress import TransferProgress
from worker.retry import RetryPolicy

__all__ = ["MasterClient", "PartialDownload", "SourceHead", "TusUpload", "worker_errors"]

log = logging.getLogger("converter.worker")
T = TypeVar("T")

# What a proxy in front of the master (or the master itself, when busy) answers while it cannot serve.
AWAY_STATUSES = {502, 503, 504}
# Longest wait between two tries to deliver a finished output while the master is away.
OUTPUT_KEPT_MAX_DELAY = 30.0


@dataclass
class SourceHead:
    """A look at a source's first ``size`` bytes before the rest of it is downloaded (the skip rule's probe).

    They are the first part of the download itself: the same GETs (the first one ranged), retries, resume, checks
    and byte counts. Once they are on disk, ``judge(path)`` is called with the part file holding them (or the whole
    source, when it is no longer); True stops the download there: the rest is not needed. Judged once
    per download, whatever the retries before or after.
    """

    size: int
    judge: Callable[[Path], bool]
    judged: bool = False


class MasterClient:
    def __init__(self, base_url: str, worker_id: str, *, retry: RetryPolicy, chunk_size: int = 1 << 20,
                 download_timeout: float = 1800.0, upload_timeout: float = 1800.0,
                 progress_interval: float = 5.0, metrics: WorkerMetrics | None = None, token: str | None = None,
                 download_limit: int = 0, upload_limit: int = 0, direct_io: bool = True, upload_window: float = 0.0):
        headers = {protocol.WORKER_ID_HEADER: worker_id}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = MasterHttp(base_url, headers)
        self.worker_id = worker_id
        self.retry = retry
        # retry.upload_window: how long a finished output is kept and its delivery retried while the master is away
        self.output_kept = retry.within(upload_window, cap=OUTPUT_KEPT_MAX_DELAY) if upload_window > 0 else None
        self.chunk_size = chunk_size
        self.progress_interval = progress_interval
        self.metrics = metrics or WorkerMetrics(CollectorRegistry())
        # transfer.download_limit / upload_limit (bytes/s, 0 = unlimited): one bucket per direction, shared by
        # the worker's slots, so the limit holds for the worker as a whole
        self.download_bucket: TokenBucket | None = bucket_for(download_limit)
        self.upload_bucket: TokenBucket | None = bucket_for(upload_limit)
        self.control = WorkerControl(self.http, worker_id)
        self.downloads = Downloader(self.http, chunk_size=chunk_size, read_timeout=download_timeout,
                                    direct=direct_io, bucket=self.download_bucket)
        self.tus = TusClient(self.http, read_timeout=upload_timeout, bucket=self.upload_bucket)
        self.multipart = MultipartUploader(self.http, read_timeout=upload_timeout, bucket=self.upload_bucket)
        self.bucket = BucketTransfers(self.http, chunk_size=chunk_size, read_timeout=download_timeout, direct=direct_io,
                                      download_bucket=self.download_bucket, upload_bucket=self.upload_bucket)

    @property
    def base_url(self) -> str:
        return self.http.base_url

    @base_url.setter
    def base_url(self, url: str) -> None:  # tests point a client at a fault-injecting proxy
        self.http.base_url = url.rstrip("/")

    @property
    def session(self) -> requests.Session:
        """This thread's session with the master (a requests.Session is not safe to share across threads)."""
        return self.http.session

    # -- control calls --------------------------------------------------------------------------

    def register(self, capabilities: dict[str, Any], concurrency: int, hostname: str,
                 schedule: dict[str, Any] | None = None) -> dict[str, Any]:
        with worker_errors():
            return self.control.register(capabilities, concurrency, hostname, schedule)

    def claim(self, wait: float, cache_free_bytes: int | None = None) -> dict[str, Any] | None:
        """The next job for this worker, waiting up to ``wait`` seconds for one; None if none came.

        With ``cache_free_bytes`` the master only hands out a job whose source (and output) fit.
        """
        with worker_errors():
            return self.control.claim(wait, cache_free_bytes)

    def heartbeat(self, job_id: str, progress: float | None, conversion: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
        with worker_errors():
            return self.control.heartbeat(job_id, progress, conversion)

    def fail(self, job_id: str, error: str, *, retryable: bool, cause: Cause) -> dict[str, Any]:
        """Report a failed attempt; only ``cause`` worker counts toward this worker's quarantine."""
        return self.retry.call(_as_worker(lambda: self.control.fail(job_id, error, retryable=retryable,
                                                                    cause=cause.value)),
                               what=f"report failure of job {job_id}")

    def health_result(self, job_id: str, health: dict[str, Any], cancel: threading.Event | None = None
                      ) -> dict[str, Any]:
        """A health check's result; kept and sent again while the master is away (``retry.upload_window``), like
        an output: the whole source was decoded for it."""
        def report() -> dict[str, Any]:
            return self.retry.call(_as_worker(lambda: self.control.health_result(job_id, health)),
                                   what=f"health result of job {job_id}")

        return self._keeping_output(report, job_id, cancel)

    def complete_shared(self, job_id: str, size: int, sha256_hex: str, cancel: threading.Event | None = None
                        ) -> dict[str, Any]:
        """Shared-storage mode: the output is on the shared mount; ask the master to verify and commit it."""
        def complete() -> dict[str, Any]:
            return self.retry.call(_as_worker(lambda: self.control.complete(job_id, size, sha256_hex)),
                                   what=f"completion of job {job_id}")

        return self._keeping_output(complete, job_id, cancel)

    def release(self, job_id: str, reason: str) -> dict[str, Any]:
        return self.retry.call(_as_worker(lambda: self.control.release(job_id, reason)),
                               what=f"release job {job_id}")

    def skip(self, job_id: str, reason: str) -> dict[str, Any]:
        """The source already matches the job's profile: the job ends skipped."""
        return self.retry.call(_as_worker(lambda: self.control.skip(job_id, reason)), what=f"skip job {job_id}")

    def keep_source(self, job_id: str, reason: str, cancel: threading.Event | None = None) -> dict[str, Any]:
        """The output came out larger than the source: the master makes the source the output. Kept and asked
        again while the master is away (``retry.upload_window``), like an output: it cost a conversion."""
        def keep() -> dict[str, Any]:
            return self.retry.call(_as_worker(lambda: self.control.keep_source(job_id, reason)),
                                   what=f"keep the source of job {job_id}")

        return self._keeping_output(keep, job_id, cancel)

    # -- transfers ------------------------------------------------------------------------------

    def download_source_video(self, job_id: str, path: Path, cancel: threading.Event | None = None,
                              head: SourceHead | None = None) -> int:
        """Stream the job's source into ``path``, verifying its SHA-256 while it arrives.

        A cut transfer resumes from the bytes already on disk (Range + If-Range on the ETag); a digest
        mismatch starts over. Retried per the policy; no partial file survives a final failure.
        ``head``: judge the source's first bytes before the rest is fetched (``SourceHead``); when it stops the
        download, ``path`` holds only them and the bytes on disk are returned.
        """
        partial = PartialDownload(path)
        try:
            return self._transfer("download", job_id, lambda: self._download_once(job_id, partial, cancel, head),
                                  cancel)
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

    def download_from_bucket(self, job_id: str, path: Path, cancel: threading.Event | None = None,
                             head: SourceHead | None = None) -> int:
        """As ``download_source_video``, from the bucket over a presigned GET (asked for at each request)."""
        partial = PartialDownload(path)
        try:
            return self._transfer("download", job_id,
                                  lambda: self._bucket_download_once(job_id, partial, cancel, head), cancel)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def upload_to_bucket(self, job_id: str, path: Path, part_size: int, cancel: threading.Event | None = None,
                         kept_source: str | None = None) -> int:
        """Send ``path`` to the bucket as presigned part PUTs, each checked by the store against its SHA-256;
        each attempt sends only the parts the store lacks, then the master completes the job. ``kept_source``:
        ``path`` is the job's source, sent as its output (``discard_larger``), and why."""
        digests = OutputDigests.of_file(path, part_size)
        return self._transfer("upload", job_id,
                              lambda: self._bucket_upload_once(job_id, path, digests, cancel, kept_source), cancel)

    def _transfer(self, direction: str, job_id: str, attempt: Callable[[], int], cancel: threading.Event | None
                  ) -> int:
        """Run one transfer under the retry policy, counting retries and final failures by direction.

        An upload carries a finished output, so it is also kept trying while the master is away.
        """
        def transfer() -> int:
            return self.retry.call(_as_worker(attempt), what=f"{direction} of job {job_id}",
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

    # -- one attempt of each transfer (the raw errors of converter_client; _transfer translates) --------

    def _download_once(self, job_id: str, partial: PartialDownload, cancel: threading.Event | None,
                       head: SourceHead | None = None) -> int:
        def fetch(start: Callable[[int | None, int], Callable[[int], None]], until: int | None) -> int:
            return self.downloads.fetch(protocol.WORKER_DOWNLOAD, partial, what=f"download of job {job_id}",
                                        progress=start, params={"job_id": job_id}, cancel=cancel, until=until)

        return self._fetch_attempt(job_id, partial, head, fetch)

    def _bucket_download_once(self, job_id: str, partial: PartialDownload, cancel: threading.Event | None,
                              head: SourceHead | None = None) -> int:
        def fetch(start: Callable[[int | None, int], Callable[[int], None]], until: int | None) -> int:
            return self.bucket.download(job_id, partial, what=f"download of job {job_id}", progress=start,
                                        cancel=cancel, until=until)

        return self._fetch_attempt(job_id, partial, head, fetch)

    def _fetch_attempt(self, job_id: str, partial: PartialDownload, head: SourceHead | None,
                       fetch: Callable[[Callable[[int | None, int], Callable[[int], None]], int | None], int]) -> int:
        """One attempt of a download: with a ``head`` not judged yet, its bytes first (a ranged GET of what is
        missing of them), the judgement, then the rest (a GET resumed from them, as after a cut). One progress
        (and one count of each byte) for the attempt, whichever GETs carry it."""
        progress: TransferProgress | None = None

        def start(total: int | None, offset: int) -> Callable[[int], None]:  # once the server has answered
            nonlocal progress
            if progress is None:
                progress = self._progress("download", job_id, total)
            progress.done = offset
            return progress.add

        if head is not None and not head.judged:
            if partial.offset < head.size:
                fetch(start, head.size)
            head.judged = True
            if head.judge(partial.path):
                if progress is not None:
                    log.info("download %s: stopped after the first %d bytes: the rest is not needed", job_id,
                             partial.offset)
                return partial.offset
        if not partial.complete:
            fetch(start, None)
        if progress is not None:
            self._finish(progress, "download")
        return partial.offset

    def _bucket_upload_once(self, job_id: str, path: Path, digests: OutputDigests, cancel: threading.Event | None,
                            kept_source: str | None = None) -> int:
        progress = self._progress("upload", job_id, digests.size)
        self.bucket.upload(job_id, path, digests, what=f"upload of job {job_id}", on_read=progress.add,
                           cancel=cancel, kept_source=kept_source)
        self._finish(progress, "upload")
        return digests.size

    def _upload_once(self, job_id: str, path: Path, digest: bytes, cancel: threading.Event | None) -> int:
        progress = self._progress("upload", job_id, path.stat().st_size)
        size = self.multipart.upload(protocol.WORKER_UPLOAD, path, digest, what=f"upload of job {job_id}",
                                     params={"job_id": job_id}, on_read=progress.add, cancel=cancel)
        self._finish(progress, "upload")
        return size

    def _tus_attempt(self, job_id: str, upload: TusUpload, cancel: threading.Event | None) -> int:
        offset = self.tus.resume_or_create(upload, {"job_id": job_id, "filename": upload.path.name,
                                                    "sha256": upload.sha256})
        progress = self._progress("upload", job_id, upload.size)
        progress.done = offset
        self.tus.send(upload, offset, what=f"upload of job {job_id}", on_read=progress.add, cancel=cancel)
        self._finish(progress, "upload")
        return upload.size

    def _progress(self, direction: str, job_id: str, total: int | None) -> TransferProgress:
        return TransferProgress(f"{direction} {job_id}", total, self.progress_interval,
                                on_bytes=self.metrics.transfer_bytes.labels(direction).inc)

    def _finish(self, progress: TransferProgress, direction: str) -> None:
        progress.finish()
        self.metrics.transfer_done(direction, progress.done, progress.elapsed)


# -- converter_client's errors as the worker's ------------------------------------------------------

@contextmanager
def worker_errors() -> Iterator[None]:
    """Raise the worker's error for what ``converter_client`` raised: what a failed call means for the job."""
    try:
        yield
    except Cancelled as exc:
        raise Shutdown(str(exc)) from exc
    except (UploadConflict, UploadDropped) as exc:  # HEAD again and resume, or start a new upload
        raise RetryableError(str(exc)) from exc
    except Refused as exc:
        _raise_for_status(exc.response)
        raise  # not reached: an error answer always raises
    except MasterAway as exc:
        raise MasterUnreachable(str(exc)) from exc
    except TransferError as exc:  # cut, short, digest mismatch: worth another try
        raise RetryableError(str(exc)) from exc


def _as_worker(call: Callable[[], T]) -> Callable[[], T]:
    def translated() -> T:
        with worker_errors():
            return call()
    return translated


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
    if code in protocol.JOB_GONE_CODES:
        raise JobLost(response.status_code, code, message)
    raise ApiRejected(response.status_code, code, message)


def _master_error(response: requests.Response) -> tuple[str, str]:
    """The master's ``{"error", "message"}``; for any other body, its start (or the status's reason)."""
    payload = error_payload(response)
    if payload is not None:
        return str(payload["error"]), str(payload.get("message") or "(no message)")
    return "http_error", body_start(response) or response.reason or "(empty body)"


def _json_or_raise(response: requests.Response) -> dict[str, Any]:
    with worker_errors():
        return json_answer(response)
