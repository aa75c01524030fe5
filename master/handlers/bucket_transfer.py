"""/api/worker/source-url, /output-parts, /output-complete: a worker's transfers with the bucket backend.

The master never relays these bytes; it hands out presigned URLs and keeps the books.

- ``source-url``: a presigned GET of the job's source, its size and the SHA-256 the worker verifies while
  it streams (the worker resumes a cut download with ``Range``, and asks again when the URL expired).
- ``output-parts``: the worker declares the output (size, SHA-256, the SHA-256 of each part, cut by
  ``protocol.part_size_for``). The master starts a multipart upload for this attempt (or finds the one it
  started), asks the store which parts it holds, and answers presigned PUTs for the others, each signed
  with its part's ``x-amz-checksum-sha256`` so the store itself refuses a corrupted part. Asking again
  after a cut, a refusal or an expired URL is how a worker resumes.
- ``output-complete``: once every part is stored with the declared layout, the master joins them (never over
  an existing object: ``If-None-Match: *``) and completes the job. With ``kept_source`` (the reason, in both
  calls) the worker sends the job's source as its output (``discard_larger``: the conversion came out larger):
  the declared size and SHA-256 must be the source's, and the job completes with ``kept_source``.

A new attempt, or a different output, gets a new upload; the old one is aborted here or by the reaper.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from converter_common import protocol
from master import errors
from master.auth import Access
from master.handlers.file_receiving import ReceivingHandler, log_completing_with_stored_output, output_writer
from master.storage import BucketStorage, is_written_by
from master.object_store import StoredPart
from master.store import BucketUpload, Job

log = logging.getLogger("converter.master")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class BucketTransferHandler(ReceivingHandler):
    access = {"POST": Access.WORKER}

    @property
    def bucket(self) -> BucketStorage:
        storage = self.services.storage
        if not isinstance(storage, BucketStorage):
            raise errors.NOT_WITH_BUCKET.error("this master keeps files locally: use download-video / upload-video")
        return storage

    def leased_job(self) -> tuple[Job, str]:
        """The processing job of ``?job_id=``, leased to the worker the ``X-Worker-Id`` header names."""
        worker_id = self.worker_id_header()
        if worker_id is None:
            raise errors.INVALID_WORKER_ID.error(f"send the worker's id in {protocol.WORKER_ID_HEADER}")
        return self.processing_job(self.job_id_argument()), worker_id

    def declared_file(self, body: dict[str, Any]) -> tuple[int, str]:
        size, sha256 = body.get("size"), body.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= self.config.server.max_upload_size:
            raise errors.INVALID_FIELD.error(f"size must be an integer 0..{self.config.server.max_upload_size}")
        if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
            raise errors.INVALID_FIELD.error("sha256 must be 64 lowercase hex digits")
        return size, sha256

    @staticmethod
    def kept_source(body: dict[str, Any], job: Job, size: int, sha256: str) -> str | None:
        """The ``kept_source`` reason, when the worker sent the source as the output: only the source's own bytes
        (its size and SHA-256) may complete a job so; 400 ``invalid_field`` otherwise."""
        reason = body.get("kept_source")
        if reason is None:
            return None
        if not isinstance(reason, str) or not reason:
            raise errors.INVALID_FIELD.error("kept_source must be a non-empty string (why the source was kept)")
        if (size, sha256) != (job.source_size, job.source_sha256):
            raise errors.INVALID_FIELD.error(f"kept_source: the output ({size} bytes, SHA-256 {sha256}) is not the "
                                             f"source ({job.source_size} bytes, SHA-256 {job.source_sha256})")
        return reason[:2000]

    @staticmethod
    def part_digests(body: dict[str, Any], count: int) -> list[bytes]:
        parts = body.get("parts")
        if not isinstance(parts, list) or len(parts) != count:
            raise errors.INVALID_FIELD.error(f"parts must list the SHA-256 of each of the {count} parts")
        if not all(isinstance(p, str) and _SHA256_HEX.match(p) for p in parts):
            raise errors.INVALID_FIELD.error("each of parts must be 64 lowercase hex digits")
        return [bytes.fromhex(p) for p in parts]

    async def plan(self, relative: str, upload_id: str, size: int, digests: list[bytes]) -> dict[str, Any]:
        """Which parts the store holds, and presigned PUTs for the others: what a sender resumes from."""
        sizes = self.expected_sizes(size)
        stored = {part.number for part in await self.bucket.stored_parts(relative, upload_id)
                  if sizes.get(part.number) == part.size}
        missing = {number: digests[number - 1] for number in sizes if number not in stored}
        parts = self.bucket.presigned_parts(relative, upload_id, missing)
        return {"part_size": protocol.part_size_for(size, self.config.storage.s3.part_size),
                "stored": sorted(stored), "expires_in": self.config.storage.s3.presign_expiry,
                "parts": [{"number": p.number, "url": p.url, "headers": p.headers} for p in parts]}

    async def stored_in_full(self, relative: str, upload_id: str, size: int) -> list[StoredPart]:
        """Every part of the layout, stored with its size; 409 ``parts_incomplete`` naming the first missing."""
        sizes = self.expected_sizes(size)
        stored = await self.bucket.stored_parts(relative, upload_id)
        wanted = [part for part in stored if sizes.get(part.number) == part.size]
        if len(wanted) != len(sizes):
            missing = sorted(set(sizes) - {part.number for part in wanted})
            raise errors.PARTS_INCOMPLETE.error(f"{len(missing)} part(s) not stored yet, first {missing[0]}")
        return wanted

    def expected_sizes(self, size: int) -> dict[int, int]:
        """Part number → size, for the layout ``protocol.part_size_for`` gives a file of ``size`` bytes."""
        part_size = protocol.part_size_for(size, self.config.storage.s3.part_size)
        count = protocol.part_count(size, part_size)
        return {n: min(part_size, size - (n - 1) * part_size) for n in range(1, count + 1)}


class SourceUrlHandler(BucketTransferHandler):
    def post(self) -> None:
        job, _worker = self.leased_job()
        self.write_json({"url": self.bucket.presigned_get(job.source_path), "size": job.source_size,
                         "sha256": job.source_sha256, "expires_in": self.config.storage.s3.presign_expiry})


class OutputPartsHandler(BucketTransferHandler):
    async def post(self) -> None:
        job, worker_id = self.leased_job()
        self.require_output(job)
        body = self.json_body()
        size, sha256 = self.declared_file(body)
        self.kept_source(body, job, size, sha256)  # refused before any upload starts: nothing to clean up
        digests = self.part_digests(body, len(self.expected_sizes(size)))
        there = await self.bucket.head(job.output_path)
        if is_written_by(there, output_writer(job), bytes.fromhex(sha256)):  # joined, not recorded
            log_completing_with_stored_output(job)  # at output-complete, which this answer leads to
            self.write_json(self.nothing_to_send(size))
            return
        upload = await self._upload_for(job, worker_id, size, sha256, occupied=there is not None)
        self.write_json(await self.plan(job.output_path, upload.upload_id, size, digests))

    def nothing_to_send(self, size: int) -> dict[str, Any]:
        return {"part_size": protocol.part_size_for(size, self.config.storage.s3.part_size),
                "stored": sorted(self.expected_sizes(size)), "expires_in": self.config.storage.s3.presign_expiry,
                "parts": []}

    async def _upload_for(self, job: Job, worker_id: str, size: int, sha256: str, *, occupied: bool) -> BucketUpload:
        """This attempt's upload of this output: the recorded one, or a new one (an old one is aborted; none is
        started when an object is at the output, ``occupied``: the job fails ``output_exists``)."""
        upload = self.store.bucket_upload(job.id)
        if upload is not None and (upload.attempt, upload.size, upload.sha256) == (job.attempts, size, sha256):
            return upload
        if upload is not None:
            await self.bucket.abort_upload(job.output_path, upload.upload_id)
        if occupied:
            self.fail_for_existing_output(job)
        upload_id = await self.bucket.start_upload(job.output_path, bytes.fromhex(sha256), output_writer(job))
        if not self.store.record_bucket_upload(job.id, worker_id, upload_id=upload_id, size=size, sha256=sha256):
            await self.bucket.abort_upload(job.output_path, upload_id)
            self.processing_job(job.id)  # raises: the job was taken from this worker meanwhile
            raise errors.not_lease_owner(job.id, worker_id)
        return self.store.bucket_upload(job.id)


class OutputCompleteHandler(BucketTransferHandler):
    async def post(self) -> None:
        job, worker_id = self.leased_job()
        self.require_output(job)
        body = self.json_body()
        size, sha256 = self.declared_file(body)
        kept_source = self.kept_source(body, job, size, sha256)
        upload = self.store.bucket_upload(job.id)
        if upload is None or (upload.attempt, upload.size, upload.sha256) != (job.attempts, size, sha256):
            raise errors.PARTS_INCOMPLETE.error("no upload of this output is open: ask for its parts first")
        if not await self.already_stored(job, bytes.fromhex(sha256)):
            await self._join(job, upload, size)
        try:
            self.processing_job(job.id)  # still ours after the awaits
            job = self.store.complete_job(job.id, size, sha256, worker_id=worker_id, kept_source=kept_source)
        except BaseException:
            await self.withdraw_output(job)  # ours alone: If-None-Match let nothing else be there
            raise
        self.services.metrics.job_completed(job)
        log.info("job %s: output stored in the bucket (%d bytes)%s", job.id, size,
                 "; the source kept as the output" if kept_source else "")
        self.write_json({"job_id": job.id, "status": job.status.value, "size": size, "sha256": sha256,
                         "output_path": job.output_path})

    async def _join(self, job: Job, upload: BucketUpload, size: int) -> None:
        """Join the stored parts at the output's name, never over an object that is there."""
        wanted = await self.stored_in_full(job.output_path, upload.upload_id, size)
        job = self.processing_job(job.id)  # still ours after the awaits
        try:
            await self.bucket.complete_upload(job.output_path, upload.upload_id, wanted)
        except FileExistsError:
            self.fail_for_existing_output(job)
