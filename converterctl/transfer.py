"""Uploading a source to create a job, downloading a job's output: streamed, with progress, restartable.

Upload: a tus upload (``converter_client.tus``, the worker's tus client too) with the job's id and profile in its metadata; a cut
transfer resumes from the master's offset, and the master creates the job once the file is in
(its SHA-256 checked). The job id is chosen here, so a retry can never create a second job. The
upload's URL and job id are remembered (``upload_state``) until the job exists, so running the same
command again, after a kill or after the retries ran out, resumes the upload instead of starting over.

Download: ``GET /api/jobs/<id>/output?presigned=1`` (a master with a bucket redirects to a presigned GET) into
``FILE.part``, the version's ETag kept beside it in
``FILE.part.etag``. A cut transfer, in this run or a later one, resumes with ``Range`` +
``If-Range``; the whole file is checked against ``Repr-Digest`` before it is renamed to ``FILE``.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from converter_client.bucket import OutputDigests, put_part, store_session, stored_bytes
from converter_client.download import Downloader, PartialDownload
from converter_client.errors import DigestMismatch, Refused
from converter_client.tus import TusClient, TusUpload
from converter_common import protocol
from converterctl.client import Client, cli_errors, quote_id
from converterctl.errors import ApiError, CliError, Failed, Unreachable
from converterctl.progress import TransferBar
from converterctl.retry import UPLOAD_RETRY, RetryPolicy
from converterctl.upload_state import RememberedUpload, UploadKey, UploadStateFile, parse_upload_expires

READ_SIZE = 1 << 20
TRANSFER_TIMEOUT = 300.0  # seconds without a byte moving before a transfer counts as cut


@dataclass(frozen=True)
class SourceRequest:
    """The job a source upload asks for; when None, the master chooses ``output_path`` and converterctl ``job_id``."""

    profile: str
    output_path: str | None = None
    job_id: str | None = None
    priority: int | None = None  # None: the profile's default

    def priority_field(self) -> dict[str, Any]:
        return {} if self.priority is None else {"priority": self.priority}


def upload_source(client: Client, path: Path, request: SourceRequest, state: UploadStateFile, *,
                  resume: bool = True, retry: RetryPolicy = UPLOAD_RETRY, show_progress: bool = True,
                  notify: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Create a job from the local file ``path`` over the master's tus endpoint; returns the job.

    The upload an earlier run of the same command left unfinished (``state``) is resumed unless
    ``resume`` is False. A cut transfer or an absent master is retried with ``retry``'s backoff, its
    count starting over whenever the master's offset moved forward; ``notify`` hears of each wait.
    """
    upload: SourceUpload | None = None  # tus or bucket: the master says which, once it answers
    failures, reached = 0, 0
    while True:
        try:
            if upload is None:
                upload = source_upload(client, path, request, state, resume=resume)
                reached = upload.offset
            return upload.send(show_progress)
        except (Unreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.code not in protocol.TUS_RESUME_CODES:
                raise
            offset = upload.offset if upload is not None else 0
            failures = 1 if offset > reached else failures + 1
            reached = offset
            if retry.exhausted(failures):
                raise _given_up(exc, upload, failures) from None
            delay = retry.delay(failures)
            notify(f"{exc}; retrying in {delay:g} s (try {failures + 1} of {retry.attempts})")
            retry.sleep(delay)


def _given_up(exc: CliError, upload: "SourceUpload | None", tries: int) -> CliError:
    if not isinstance(exc, Unreachable) or upload is None or upload.current is None:
        return exc
    return Unreachable(f"{exc} (gave up after {tries} tries in a row; run the same command again to resume the upload)")


class SourceUpload:
    """One source upload on the master: the remembered one resumed, or a new one created, then sent to the end.

    The master creates the job when the last byte is in; the job id is chosen here (or remembered), so
    neither a retry nor a second run can create a second job. The requests are the shared tus client's
    (``converter_client.tus``); what is remembered between runs is ``upload_state``'s.
    """

    def __init__(self, client: Client, path: Path, request: SourceRequest, state: UploadStateFile, *, resume: bool):
        self.client, self.path, self.request, self.state = client, path, request, state
        self.tus = TusClient(client, read_timeout=TRANSFER_TIMEOUT)
        self.key = UploadKey.of(client.base_url, path, request.profile, request.output_path, request.job_id)
        remembered = state.lookup(self.key)
        self.current: RememberedUpload | None = remembered if resume else None
        self._abandoned = None if resume else remembered
        self.job_id = request.job_id or (self.current.job_id if self.current else uuid.uuid4().hex[:16])
        self.offset = 0  # the master's offset when this attempt began

    def send(self, show_progress: bool) -> dict[str, Any]:
        with cli_errors():
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
        created = self.tus.create(self.key.size, {
            "profile": self.request.profile, "id": self.job_id, "output_path": self.request.output_path or "",
            "filename": self.path.name, "sha256": self.sha256,
            **{key: str(value) for key, value in self.request.priority_field().items()}})
        self.current = RememberedUpload(created.location, self.job_id, time.time(),
                                        parse_upload_expires(created.expires))
        self.offset = 0
        self.state.remember(self.key, self.current)

    def _resume(self) -> dict[str, Any] | None:
        """Ask the master where the upload stands; the job if the upload already became one."""
        state = self.tus.state(self.current.location)
        if state is None:
            return self._gone()
        self.offset = state.offset
        self._note_expiry(parse_upload_expires(state.expires))
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
            self.tus.terminate(self._abandoned.location)
        except Refused:
            pass  # already gone, or not ours to delete: the new upload goes ahead either way
        self.state.forget(self.key)
        self._abandoned = None

    def _patch(self, show_progress: bool) -> None:
        """The rest of the file in one PATCH (its SHA-256 is in the upload's metadata)."""
        progress = TransferBar(f"upload {self.path.name}", self.key.size, enabled=show_progress)
        progress.start_at(self.offset)
        upload = TusUpload(self.path, self.key.size, bytes.fromhex(self.sha256), self.current.location)
        try:
            self.tus.send(upload, self.offset, what=f"upload of {self.path.name}", on_read=progress.update)
        finally:
            progress.close()


def source_upload(client: Client, path: Path, request: SourceRequest, state: UploadStateFile, *,
                  resume: bool) -> "SourceUpload":
    """A tus upload through the master, or, when the master keeps its files in a bucket, straight to the bucket
    (``BucketSourceUpload``). A remembered upload keeps its way; a new one asks the master which it takes."""
    remembered = state.lookup(UploadKey.of(client.base_url, path, request.profile, request.output_path,
                                           request.job_id))
    if remembered is not None and resume:
        bucket = remembered.location.startswith(protocol.SOURCE_UPLOADS)
        return BucketSourceUpload(client, path, request, state, resume=resume) if bucket else \
            SourceUpload(client, path, request, state, resume=resume)
    try:
        part_size = int(client.json("GET", protocol.SOURCE_UPLOADS)["part_size"])
    except ApiError as exc:
        if exc.code == protocol.NOT_WITH_BUCKET or exc.status in (404, 405):  # local files, or an older master
            return SourceUpload(client, path, request, state, resume=resume)
        raise
    return BucketSourceUpload(client, path, request, state, resume=resume, part_size=part_size)


class BucketSourceUpload(SourceUpload):
    """One source sent straight to the master's bucket: presigned part PUTs, each checked by the store against
    its SHA-256 (``/api/source-uploads``). Resumed like a tus upload: the master says which parts the store
    holds, and only the others are sent; the job is made when the master joins the parts."""

    def __init__(self, client: Client, path: Path, request: SourceRequest, state: UploadStateFile, *, resume: bool,
                 part_size: int | None = None):
        super().__init__(client, path, request, state, resume=resume)
        self.part_size = part_size
        self.store = store_session()
        self._plan: dict[str, Any] | None = None

    @cached_property
    def digests(self) -> OutputDigests:
        if self.part_size is None:  # a remembered upload: ask the master its part size
            self.part_size = int(self.client.json("GET", protocol.SOURCE_UPLOADS)["part_size"])
        return OutputDigests.of_file(self.path, self.part_size)

    @cached_property
    def sha256(self) -> str:
        return self.digests.sha256

    def _declared(self) -> dict[str, Any]:
        return {"size": self.digests.size, "sha256": self.digests.sha256, "parts": list(self.digests.parts)}

    def _create(self) -> None:
        answer = self.client.json("POST", protocol.SOURCE_UPLOADS, json={
            **self._declared(), "profile": self.request.profile, "id": self.job_id,
            "output_path": self.request.output_path, "filename": self.path.name, **self.request.priority_field()})
        self.current = RememberedUpload(f"{protocol.SOURCE_UPLOADS}/{answer['upload_id']}", self.job_id, time.time(),
                                        answer.get("expires_at"))
        self.state.remember(self.key, self.current)
        self._take(answer)

    def _resume(self) -> dict[str, Any] | None:
        try:
            answer = self.client.json("POST", self.current.location, json=self._declared())
        except ApiError as exc:
            if exc.status != 404:
                raise
            return self._gone()
        self._take(answer)
        return None

    def _take(self, plan: dict[str, Any]) -> None:
        self._plan = plan
        self.offset = stored_bytes(self.digests, plan["stored"])

    def _terminate_abandoned(self) -> None:
        if self._abandoned is None:
            return
        if self._abandoned.location.startswith(protocol.SOURCE_UPLOADS):
            try:
                self.client.request("DELETE", self._abandoned.location)
            except ApiError:
                pass  # already gone: the new upload goes ahead either way
        self.state.forget(self.key)
        self._abandoned = None

    def _patch(self, show_progress: bool) -> None:
        """The parts the store lacks, then the master joins them and makes the job."""
        progress = TransferBar(f"upload {self.path.name}", self.key.size, enabled=show_progress)
        progress.start_at(self.offset)
        try:
            for part in self._plan["parts"]:
                put_part(self.store, self.path, self.digests, part, what=f"upload of {self.path.name}",
                         on_read=progress.update, read_timeout=TRANSFER_TIMEOUT)
        finally:
            progress.close()
        self.client.json("POST", f"{self.current.location}/complete", json={})


def _file_sha256(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class PartialFile:
    """``FILE.part`` and ``FILE.part.etag``: the bytes so far and the version they belong to."""

    def __init__(self, destination: Path):
        self.path = destination.with_name(destination.name + ".part")
        self.etag_path = destination.with_name(destination.name + ".part.etag")

    def resume(self) -> PartialDownload:
        """The bytes an earlier run left, with their hash; nothing when the version they belong to is unknown."""
        if not self.path.exists() or not self.etag_path.exists():
            self.discard()
            return PartialDownload(self.path)
        return PartialDownload.on_disk(self.path, self.etag_path.read_text().strip() or None)

    def keep_version(self, partial: PartialDownload) -> None:
        self.etag_path.write_text(partial.etag or "")

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
    downloader = Downloader(client, chunk_size=READ_SIZE, read_timeout=TRANSFER_TIMEOUT)
    bars: list[TransferBar] = []

    def start(total: int | None, offset: int) -> Callable[[int], None]:
        bars.append(TransferBar(f"download {job_id}", total or 0, enabled=show_progress))
        bars[-1].start_at(offset)
        return bars[-1].update

    def fetch() -> int:
        size = downloader.fetch(protocol.job_path(quote_id(job_id), "output"), partial.resume(),
                                what=f"download of job {job_id}", progress=start, on_version=partial.keep_version,
                                params={"presigned": "1"})  # a master with a bucket redirects: bytes skip it
        bars[-1].close()
        return size

    with cli_errors():
        try:
            try:
                return fetch()
            except Refused as exc:
                if exc.status != 416:
                    raise
            partial.discard()  # the part is longer than the file: another version, start over
            return fetch()
        except DigestMismatch:
            partial.discard()
            raise Failed(f"the downloaded output of job {job_id} does not match its Repr-Digest; removed it") from None
