"""/api/jobs: submit, list, show, cancel and retry jobs.

A job is submitted as JSON naming a file already in storage, or by uploading its source as multipart:
``curl -F video=@movie.mkv -F profile=h264-720p [-F output_path=out/x.mp4] [-F id=abc] .../api/jobs``.
A multipart body streams to a temp file (``multipart.MultipartReceiver``); its fields may come in any
order, so they are checked once the body is complete. Either way ``master.intake`` makes the job.
"""

from __future__ import annotations

import tornado.web

from converter_common.protocol import job_path
from master import errors
from master.auth import Access
from master.handlers.base import CONTROL_BODY_LIMIT, BaseHandler, check_job_id
from master.handlers.multipart import MultipartReceiver, TextField, form_filename
from master.intake import NO_OUTPUT, check_priority, new_job_id, priority_from_text
from master.states import JobStatus
from master.store import Job

MAX_PAGE = 1000
JSON_FIELDS = {"id", "source_path", "output_path", "profile", "priority"}
TEXT_FIELDS = ("profile", "output_path", "id", "priority")  # of a multipart submission, besides the video
PATCH_FIELDS = {"priority"}


@tornado.web.stream_request_body
class JobsHandler(MultipartReceiver, BaseHandler):
    metric_label = "JobsUploadHandler"
    access = {"GET": Access.READ, "POST": Access.ADMIN}
    receives_files = True

    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._multipart = False
        self._fields: dict[str, TextField] = {}

    def prepare(self) -> None:
        super().prepare()  # authentication, before the body is read (the limit of a GET's stays the small one)
        if self.request.method != "POST":
            return
        self._multipart = self.request.headers.get("Content-Type", "").lower().startswith("multipart/form-data")
        if not self._multipart:
            self.accept_body(CONTROL_BODY_LIMIT)
            return
        incoming = self.services.intake.incoming_dir()
        self.accept_upload(incoming)
        parser = self.open_multipart(incoming)
        for name in TEXT_FIELDS:
            self._fields[name] = TextField(name)
            parser.register(name, self._fields[name])

    async def data_received(self, chunk: bytes) -> None:
        if self._multipart:
            await self.feed(chunk)
        else:
            super().data_received(chunk)

    async def post(self) -> None:
        job = await (self._submit_upload() if self._multipart else self._submit_json())
        self.set_header("Location", job_path(job.id))
        self.write_json(job.to_dict(), 201)

    async def _submit_json(self) -> Job:
        body = self.json_body()
        unknown = set(body) - JSON_FIELDS
        if unknown:
            raise errors.UNKNOWN_FIELD.error(f"unknown field(s): {', '.join(sorted(unknown))}")
        job_id = check_job_id(body["id"]) if body.get("id") is not None else new_job_id()
        profile = self.services.intake.profile(body.get("profile"))
        priority = check_priority(body.get("priority"))
        storage = self.services.storage
        source = storage.path(body.get("source_path"), "source_path")
        output = NO_OUTPUT if body.get("output_path") is None and self.config.profiles[profile].check_only \
            else storage.path(body.get("output_path"), "output_path")  # health-check: none
        return await self.services.intake.from_stored_file(job_id=job_id, source=source, outputs=[output],
                                                           profile=profile, priority=priority)

    async def _submit_upload(self) -> Job:
        digest = await self.finish_part()
        values = {name: field.value for name, field in self._fields.items()}
        profile = self.services.intake.profile(values["profile"])
        priority = priority_from_text(values["priority"])
        job_id = check_job_id(values["id"]) if values["id"] else new_job_id()
        job = await self.services.intake.from_received_file(
            job_id=job_id, received=self._temp_path, client_name=form_filename(self._sink.multipart_filename or ""),
            output_path=values["output_path"] or None, profile=profile, sha256=digest, priority=priority)
        self._temp_path = None
        return job

    def field_bytes(self) -> int:
        return sum(field.size for field in self._fields.values())

    def get(self) -> None:
        status = self.get_query_argument("status", None)
        if status is not None and status not in {s.value for s in JobStatus}:
            raise errors.INVALID_STATUS.error(f"status must be one of {', '.join(s.value for s in JobStatus)}")
        limit = self._int_argument("limit", 100, 1, MAX_PAGE)
        offset = self._int_argument("offset", 0, 0, 2**62)
        jobs, total = self.store.list_jobs(status=JobStatus(status) if status else None, limit=limit, offset=offset)
        self.write_json({"jobs": [j.to_dict() for j in jobs], "total": total, "limit": limit, "offset": offset})

    def _int_argument(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise errors.INVALID_PARAMETER.error(f"{name} must be an integer") from None
        if not low <= value <= high:
            raise errors.INVALID_PARAMETER.error(f"{name} must be between {low} and {high}")
        return value


class JobHandler(BaseHandler):
    access = {"GET": Access.READ, "PATCH": Access.ADMIN}

    def get(self, job_id: str) -> None:
        self.write_json(self.store.get_job(check_job_id(job_id)).to_dict())

    def patch(self, job_id: str) -> None:
        """What may change of a job: its priority, while it is pending (409 ``job_not_pending`` after)."""
        job_id = check_job_id(job_id)
        body = self.json_body()
        unknown = set(body) - PATCH_FIELDS
        if unknown:
            raise errors.UNKNOWN_FIELD.error(f"unknown field(s): {', '.join(sorted(unknown))}; only priority changes")
        priority = check_priority(body.get("priority"))
        if priority is None:
            raise errors.INVALID_PRIORITY.error("give the new priority: {\"priority\": n}")
        self.write_json(self.store.set_priority(job_id, priority).to_dict())


class JobAttemptsHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self, job_id: str) -> None:
        """Every attempt of the job that ended, first to last; the running one is the job itself."""
        self.write_json({"attempts": self.store.attempts_of(check_job_id(job_id))})


class JobCancelHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    def post(self, job_id: str) -> None:
        self.write_json(self.store.cancel(check_job_id(job_id)).to_dict())


class JobRetryHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    async def post(self, job_id: str) -> None:
        job = self.store.get_job(check_job_id(job_id))
        # another job's output, or the user's own file: a retry may not overwrite it (a health check has no output)
        if job.output_path and await self.services.storage.exists(job.output_path):
            raise errors.OUTPUT_EXISTS.error(f"output_path {job.output_path!r} exists now; a retry would"
                                             " overwrite it: remove it or submit a new job")
        job = self.store.retry(job.id)
        self.services.wakeup.send()
        self.write_json(job.to_dict())
