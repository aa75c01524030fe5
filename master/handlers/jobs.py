"""/api/jobs: submit, list, show, cancel and retry jobs."""

from __future__ import annotations

import uuid

from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler, check_job_id
from master.paths import require_file, resolve_in_root
from master.submission import check_output, insert_job, source_digest
from master.states import JobStatus

MAX_PAGE = 1000


class JobsHandler(BaseHandler):
    access = {"GET": Access.READ, "POST": Access.ADMIN}

    async def post(self) -> None:
        body = self.json_body()
        unknown = set(body) - {"id", "source_path", "output_path", "profile"}
        if unknown:
            raise errors.bad_request("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
        job_id = check_job_id(body["id"]) if body.get("id") is not None else uuid.uuid4().hex[:16]
        profile = self._profile(body.get("profile"))
        root = self.config.storage.root
        source = resolve_in_root(root, body.get("source_path"), "source_path")
        output = resolve_in_root(root, body.get("output_path"), "output_path")
        require_file(source, "source_path")
        check_output(output, source, profile)
        digest = await source_digest(source)
        job = insert_job(self.store, self.config, job_id=job_id, source=source, outputs=[output], profile=profile,
                         sha256=digest)
        self.announce_created(job)

    def announce_created(self, job) -> None:
        self.services.metrics.jobs_submitted.inc()
        self.services.dispatcher.notify()
        self.set_header("Location", f"/api/jobs/{job.id}")
        self.write_json(job.to_dict(), 201)

    def get(self) -> None:
        status = self.get_query_argument("status", None)
        if status is not None and status not in {s.value for s in JobStatus}:
            raise errors.bad_request("invalid_status", f"status must be one of {', '.join(s.value for s in JobStatus)}")
        limit = self._int_argument("limit", 100, 1, MAX_PAGE)
        offset = self._int_argument("offset", 0, 0, 2**62)
        jobs, total = self.store.list_jobs(status=JobStatus(status) if status else None, limit=limit, offset=offset)
        self.write_json({"jobs": [j.to_dict() for j in jobs], "total": total, "limit": limit, "offset": offset})

    def _profile(self, name: object) -> str:
        if not isinstance(name, str) or name not in self.config.profiles:
            raise errors.bad_request("unknown_profile", f"profile must be one of: {', '.join(self.config.profiles)}")
        return name

    def _int_argument(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise errors.bad_request("invalid_parameter", f"{name} must be an integer") from None
        if not low <= value <= high:
            raise errors.bad_request("invalid_parameter", f"{name} must be between {low} and {high}")
        return value


class JobHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self, job_id: str) -> None:
        self.write_json(self.store.get_job(check_job_id(job_id)).to_dict())


class JobCancelHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    def post(self, job_id: str) -> None:
        self.write_json(self.store.cancel(check_job_id(job_id)).to_dict())


class JobRetryHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    def post(self, job_id: str) -> None:
        job = self.store.get_job(check_job_id(job_id))
        output = resolve_in_root(self.config.storage.root, job.output_path, "output_path")
        if output.exists():  # another job's output, or the user's own file: a retry may not overwrite it
            raise errors.conflict("output_exists", f"output_path {job.output_path!r} exists now; a retry would"
                                                   " overwrite it: remove it or submit a new job")
        job = self.store.retry(job.id)
        self.services.dispatcher.notify()
        self.write_json(job.to_dict())
