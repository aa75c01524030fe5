"""/api/worker/complete?job_id=: a shared-storage worker wrote the output itself; verify and commit it.

The worker wrote ``shared_temp_path(job, output)`` on the storage it shares with the master. The
master checks the size and the SHA-256 the worker reports against the file (hashing it off the
IOLoop), then renames it into place exactly as an upload is committed.
"""

from __future__ import annotations

import re

from converter_common.shared_storage import shared_temp_path
from master import errors
from master.auth import Access
from master.handlers.base import check_worker_id
from master.handlers.receiving import ReceivingHandler
from master.paths import resolve_in_root
from master.submission import source_digest

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class SharedCompleteHandler(ReceivingHandler):
    access = {"POST": Access.WORKER}

    async def post(self) -> None:
        job_id = self.job_id_argument()
        body = self.json_body()
        worker_id = check_worker_id(body.get("worker_id"))
        size, sha256 = body.get("size"), body.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise errors.bad_request("invalid_field", "size must be an integer >= 0")
        if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
            raise errors.bad_request("invalid_field", "sha256 must be 64 lowercase hex digits")
        job = self.processing_job(job_id)
        if job.worker_id != worker_id:
            raise errors.conflict("not_lease_owner", f"job {job_id!r} is not leased to worker {worker_id!r}")
        temp = resolve_in_root(self.config.storage.root, shared_temp_path(job.id, job.output_path), "output")
        if not temp.is_file():
            raise errors.bad_request("output_missing", "no converted file where shared-storage workers write it")
        actual = temp.stat().st_size
        if actual != size:
            temp.unlink(missing_ok=True)
            raise errors.bad_request("size_mismatch", f"the file has {actual} bytes, the worker reported {size}")
        digest = await source_digest(temp)
        if digest.hex() != sha256:
            temp.unlink(missing_ok=True)
            raise errors.bad_request("digest_mismatch", "the file's SHA-256 differs from the worker's")
        job = await self.commit_output(job.id, temp, size, digest)
        self.write_json({"job_id": job.id, "status": job.status.value, "size": size, "sha256": sha256,
                         "output_path": job.output_path})
