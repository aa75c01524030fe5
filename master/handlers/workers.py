"""/api/workers (the fleet as the master sees it) and /api/worker/register."""

from __future__ import annotations

import time

from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler, check_worker_id


class WorkersHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self) -> None:
        now = time.time()
        # A worker long-polls at most max_claim_wait and heartbeats well within a lease: silent longer means gone.
        online_window = self.config.jobs.lease_seconds + self.config.jobs.max_claim_wait
        workers = []
        for worker in self.store.list_workers():
            data = worker.to_dict()
            data["online"] = now - worker.last_seen_at <= online_window
            data["quarantined"] = worker.quarantined_until > now
            data["jobs"] = self.store.jobs_of_worker(worker.id)
            workers.append(data)
        self.write_json({"workers": workers})


MAX_CAPABILITY_DEPTH = 16  # what the worker probe reports nests a few levels; far deeper cannot be served back


class WorkerRegisterHandler(BaseHandler):
    access = {"POST": Access.WORKER}

    def post(self) -> None:
        body = self.json_body()
        worker_id = check_worker_id(body.get("worker_id"))
        hostname = body.get("hostname", "")
        capabilities = body.get("capabilities", {})
        concurrency = body.get("concurrency", 1)
        if not isinstance(hostname, str) or len(hostname) > 255:
            raise errors.INVALID_FIELD.error("hostname must be a string of at most 255 characters")
        if not isinstance(capabilities, dict) or _depth(capabilities) > MAX_CAPABILITY_DEPTH:
            raise errors.INVALID_FIELD.error(f"capabilities must be a JSON object nested at most"
                                                      f" {MAX_CAPABILITY_DEPTH} levels deep")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 256:
            raise errors.INVALID_FIELD.error("concurrency must be an integer 1..256")
        worker = self.store.register_worker(worker_id=worker_id, hostname=hostname, capabilities=capabilities,
                                            concurrency=concurrency)
        self.write_json({"worker": worker.to_dict(), "lease_seconds": self.config.jobs.lease_seconds,
                         "max_claim_wait": self.config.jobs.max_claim_wait})


def _depth(value: object, limit: int = 64) -> int:
    """How deeply ``value`` nests lists and objects (counting stops past ``limit``)."""
    if limit <= 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)
