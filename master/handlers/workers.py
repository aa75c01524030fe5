"""/api/workers (the fleet as the master sees it), /api/workers/<id>/pause and /resume, and /api/worker/register."""

from __future__ import annotations

import time
from typing import Any

from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler, check_worker_id, is_number
from master.store import Worker

MAX_WINDOWS = 32


class WorkersHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self) -> None:
        self.write_json({"workers": [worker_view(self, worker) for worker in self.store.list_workers()]})


def worker_view(handler: BaseHandler, worker: Worker) -> dict[str, Any]:
    """The worker as GET /api/workers shows it: its record, and whether it is online and may claim."""
    now = time.time()
    # A worker long-polls at most max_claim_wait and heartbeats well within a lease: silent longer means gone.
    online_window = handler.config.jobs.lease_seconds + handler.config.jobs.max_claim_wait
    data = worker.to_dict()
    data["online"] = now - worker.last_seen_at <= online_window
    data["quarantined"] = worker.quarantined_until > now
    data["paused"] = worker.paused_at is not None
    data["scheduled_off"] = worker.scheduled_off
    data["jobs"] = handler.store.jobs_of_worker(worker.id)
    return data


class WorkerPauseHandler(BaseHandler):
    """Pause (finish the current jobs, claim nothing) a worker the master knows, whatever its version: the master
    refuses its claims. Kept in the database, so it outlives restarts of either side."""

    access = {"POST": Access.ADMIN}

    def post(self, worker_id: str) -> None:
        self.write_json(worker_view(self, self.store.pause_worker(check_worker_id(worker_id))))


class WorkerResumeHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    def post(self, worker_id: str) -> None:
        worker = self.store.resume_worker(check_worker_id(worker_id))
        self.services.wakeup.send()
        self.write_json(worker_view(self, worker))


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
                                            concurrency=concurrency, schedule=_schedule(body.get("schedule")))
        self.write_json({"worker": worker.to_dict(), "lease_seconds": self.config.jobs.lease_seconds,
                         "max_claim_wait": self.config.jobs.max_claim_wait})


def _schedule(value: object) -> dict[str, Any] | None:
    """What a worker says of its ``worker.schedule``: its windows, whether it is inside one now, and when that
    changes next (epoch seconds, or null)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"windows", "open", "next_change"}:
        raise errors.INVALID_FIELD.error("schedule must be an object with windows, open and next_change")
    windows, is_open, next_change = value.get("windows", []), value.get("open"), value.get("next_change")
    if not (isinstance(windows, list) and len(windows) <= MAX_WINDOWS
            and all(isinstance(w, str) and len(w) <= 64 for w in windows)):
        raise errors.INVALID_FIELD.error(f"schedule.windows must be a list of at most {MAX_WINDOWS} strings")
    if not isinstance(is_open, bool):
        raise errors.INVALID_FIELD.error("schedule.open must be true or false")
    if next_change is not None and not is_number(next_change, 0, 2**40):
        raise errors.INVALID_FIELD.error("schedule.next_change must be epoch seconds or null")
    return {"windows": windows, "open": is_open, "next_change": next_change}


def _depth(value: object, limit: int = 64) -> int:
    """How deeply ``value`` nests lists and objects (counting stops past ``limit``)."""
    if limit <= 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)
