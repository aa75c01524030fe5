"""/api/worker/complete?job_id=: a shared-storage worker wrote the output itself; verify and commit it.

The worker wrote ``shared_temp_path(job, output)`` on the storage it shares with the master. The
master checks the size and the SHA-256 the worker reports against the file (hashing it off the
IOLoop), then renames it into place exactly as an upload is committed.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import tornado.ioloop

from converter_common.shared_storage import shared_temp_path
from master import errors
from master.auth import Access
from master.handlers.base import check_worker_id
from master.handlers.file_receiving import ReceivingHandler
from master.intake import source_digest
from master.paths import resolve_in_root
from master.uploads import MULTIPART_KIND, temp_file_name

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class WorkerCompleteHandler(ReceivingHandler):
    metric_label = "SharedCompleteHandler"
    access = {"POST": Access.WORKER}

    async def post(self) -> None:
        job_id = self.job_id_argument()
        if self.services.storage.in_bucket:
            raise errors.NOT_WITH_BUCKET.error("shared-storage workers need the local backend; with a bucket, "
                                               "run workers with storage.mode: transfer")
        worker_id, size, sha256 = self._report()
        job = self.processing_job(job_id)
        if job.worker_id != worker_id:
            raise errors.not_lease_owner(job_id, worker_id)
        temp = resolve_in_root(self.config.storage.root, shared_temp_path(job.id, job.output_path), "output")
        await self._verify(temp, size, sha256)
        job = await self.commit_output(job.id, temp, size, bytes.fromhex(sha256))
        self.write_json({"job_id": job.id, "status": job.status.value, "size": size, "sha256": sha256,
                         "output_path": job.output_path})

    def _report(self) -> tuple[str, int, str]:
        """What the worker says it wrote: its id, the file's size and SHA-256 (hex)."""
        body = self.json_body()
        worker_id = check_worker_id(body.get("worker_id"))
        size, sha256 = body.get("size"), body.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise errors.INVALID_FIELD.error("size must be an integer >= 0")
        if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
            raise errors.INVALID_FIELD.error("sha256 must be 64 lowercase hex digits")
        return worker_id, size, sha256

    async def _verify(self, temp: Path, size: int, sha256: str) -> None:
        """The file is there with the size and digest reported; a file that differs is removed."""
        if not temp.is_file():
            raise errors.OUTPUT_MISSING.error()
        actual = temp.stat().st_size
        if actual != size:
            temp.unlink(missing_ok=True)
            raise errors.SIZE_MISMATCH.error(f"the file has {actual} bytes, the worker reported {size}")
        if (await source_digest(temp)).hex() != sha256:
            temp.unlink(missing_ok=True)
            raise errors.DIGEST_MISMATCH.error("the file's SHA-256 differs from the worker's")


class KeepSourceHandler(ReceivingHandler):
    """/api/worker/keep-source?job_id=: the converted output came out larger than the source and the job's profile
    discards such outputs (``discard_larger``): a copy of the source becomes the output, put in place like an
    upload (never over an existing file), and the job completes with ``kept_source`` and the reason. Local
    backend only: with a bucket the master answers ``not_with_bucket``; there the worker sends its copy of the
    source as the output (``output-complete`` with ``kept_source``, ``bucket_transfer.py``)."""

    metric_label = "KeepSourceHandler"
    access = {"POST": Access.WORKER}

    async def post(self) -> None:
        job_id = self.job_id_argument()
        if self.services.storage.in_bucket:
            raise errors.NOT_WITH_BUCKET.error("keep-source is for the local backend; with a bucket the worker sends "
                                               "the source as the output (output-complete with kept_source)")
        body = self.json_body()
        worker_id = check_worker_id(body.get("worker_id"))
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason:
            raise errors.INVALID_FIELD.error("reason must be a non-empty string")
        job = self.processing_job(job_id)
        if job.worker_id != worker_id:
            raise errors.not_lease_owner(job_id, worker_id)
        source = resolve_in_root(self.config.storage.root, job.source_path, "source_path")
        temp = self.output_staging_dir(job) / temp_file_name(MULTIPART_KIND, uuid.uuid4().hex)
        try:
            await tornado.ioloop.IOLoop.current().run_in_executor(None, shutil.copyfile, source, temp)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise errors.storage_error(exc) from None
        size = temp.stat().st_size
        digest = await source_digest(temp)
        job = await self.commit_output(job.id, temp, size, digest, kept_source=reason[:2000])
        self.write_json(job.to_dict())
