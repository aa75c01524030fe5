"""What every handler shares: dependencies via ``initialize``, JSON in and out, one error renderer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

import tornado.web

from converter_common.batchwrite import BatchWriter
from converter_common.ratelimit import TokenBucket
from master import errors
from master.auth import Access, Tokens
from master.config import MasterConfig
from master.dispatch import Dispatcher
from master.errors import ApiError
from master.metrics import MasterMetrics
from master.states import JobStatus
from master.store import (DuplicateJob, DuplicateUpload, InvalidTransition, Job, JobNotFound, JobStore, NotOwner, OutputBusy,
                          StoreError, UploadNotFound)

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONTROL_BODY_LIMIT = 1 << 20  # every route but the uploads: a JSON document of a few hundred bytes
MAX_URL_LENGTH = 8192
DECIMAL = re.compile(r"[0-9]{1,19}")
WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


@dataclass(frozen=True)
class Services:
    """The master's dependencies, handed to each handler through ``initialize``."""

    config: MasterConfig
    store: JobStore
    dispatcher: Dispatcher
    metrics: MasterMetrics
    tokens: Tokens = Tokens()
    upload_slots: "UploadSlots" = field(default_factory=lambda: UploadSlots())
    # tus upload id → (offset, running SHA-256 up to it); lost on restart, then rebuilt from the file
    upload_hashes: dict = field(default_factory=dict)
    # tus upload id → RECEIVING, or the future of its settling PATCH (one PATCH at a time per upload)
    upload_busy: dict = field(default_factory=dict)
    # server.outbound_limit: one token bucket shared by every download; None when unlimited
    outbound: TokenBucket | None = None
    # builds what writes and hashes a received body (BatchWriter's signature); bench/null_master.py swaps
    # in a null sink to measure the software overhead alone
    receive_writer: Callable[..., BatchWriter] = BatchWriter


@dataclass
class UploadSlots:
    """How many uploads are streaming in now (IOLoop-only state, so no lock)."""

    in_use: int = 0


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Every route streams its body, so that ``prepare`` authenticates and sets the body limit before a byte
    of it is read; routes that are not uploads keep what arrives, up to ``CONTROL_BODY_LIMIT``."""

    # Who may call each method; handlers override this table.
    access: dict[str, Access] = {}
    # Upload routes raise the body limit themselves, once they know the caller and the upload (``accept_body``).
    receives_files = False

    def initialize(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.store = services.store
        self._body = bytearray()

    def prepare(self) -> None:
        self.limit_request()
        self.authorize(self.access.get(self.request.method, Access.ADMIN))
        if not self.receives_files:
            self.accept_body(CONTROL_BODY_LIMIT)

    def limit_request(self) -> None:
        """Before anything else: a small body limit until the caller is known, and no overlong URL."""
        self.request.connection.set_max_body_size(CONTROL_BODY_LIMIT)
        if len(self.request.uri) > MAX_URL_LENGTH:
            raise ApiError(414, "uri_too_long", f"the URL exceeds {MAX_URL_LENGTH} bytes")
        if self.request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise ApiError(415, "unsupported_content_encoding", "send request bodies without Content-Encoding")

    def accept_body(self, limit: int) -> None:
        """Let a body of up to ``limit`` bytes in: a larger declared Content-Length is refused now (413), a
        larger chunked body once it passes the limit (``master.http_server``)."""
        declared = self.declared_length()
        if declared is not None and declared > limit:
            raise errors.body_too_large(limit)
        self.request.connection.set_max_body_size(limit)

    def declared_length(self) -> int | None:
        """Content-Length when it is a plain decimal (Tornado refuses any other form before reading the body)."""
        value = self.request.headers.get("Content-Length", "").strip()
        return int(value) if DECIMAL.fullmatch(value) else None

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    def authorize(self, needed: Access) -> None:
        allowed = self.services.tokens.allows(needed, self.request.headers.get("Authorization"))
        if allowed is None:
            raise ApiError(401, "unauthorized", "a valid bearer token is required",
                           headers={"WWW-Authenticate": 'Bearer realm="converter"'})
        if not allowed:
            raise ApiError(403, "forbidden", f"this token may not {self.request.method} {self.request.path}")

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, separators=(",", ":")) + "\n")

    def json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(bytes(self._body), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise errors.bad_request("invalid_json", f"request body is not valid JSON ({exc.__class__.__name__})")
        if not isinstance(data, dict):
            raise errors.bad_request("invalid_json", "request body must be a JSON object")
        return data

    def job_id_argument(self) -> str:
        job_id = self.get_query_argument("job_id", None, strip=False)
        if job_id is None:
            raise errors.bad_request("missing_job_id", "query parameter job_id is required")
        return check_job_id(job_id)

    def worker_id_header(self) -> str | None:
        """The calling worker's id, when it says (curl users of the seed endpoints do not)."""
        value = self.request.headers.get("X-Worker-Id")
        return None if value is None else check_worker_id(value)

    def processing_job(self, job_id: str) -> Job:
        """The job, which must exist (404) and be processing (400), leased to the caller if it names itself."""
        job = self.store.get_job(job_id)
        if job.status is not JobStatus.PROCESSING:
            raise errors.invalid_state(job_id, job.status.value, JobStatus.PROCESSING.value)
        worker_id = self.worker_id_header()
        if worker_id is not None and job.worker_id != worker_id:
            raise errors.conflict("not_lease_owner", f"job {job_id!r} is not leased to worker {worker_id!r}")
        return job

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StoreError):
            e = api_error_from_store(e)
        if isinstance(e, ApiError):
            if not self._finished:
                self.clear()
                for name, value in e.headers.items():
                    self.set_header(name, value)
                self.write_json({"error": e.code, "message": e.message}, e.status)
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = self._reason
        code = "internal_error" if status_code >= 500 else HTTPStatus(status_code).phrase.lower().replace(" ", "_")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": code, "message": message}) + "\n")


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:  # no authentication: there is nothing here to protect
        self.limit_request()
        raise errors.not_found("not_found", f"no route for {self.request.method} {self.request.path}")


def check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise errors.bad_request("invalid_job_id", "job id must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return job_id


def check_worker_id(worker_id: object) -> str:
    if not isinstance(worker_id, str) or not WORKER_ID.fullmatch(worker_id):
        raise errors.bad_request("invalid_worker_id", "worker id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return worker_id


def is_number(value: object, low: float, high: float) -> bool:
    """A JSON number (not a boolean) within [low, high]: NaN, infinities and huge integers are not."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def api_error_from_store(exc: StoreError) -> ApiError:
    if isinstance(exc, JobNotFound):
        return errors.job_not_found(exc.job_id)
    if isinstance(exc, DuplicateJob):
        return errors.conflict("duplicate_job", str(exc))
    if isinstance(exc, OutputBusy):
        return errors.conflict("output_busy", str(exc))
    if isinstance(exc, InvalidTransition):
        return errors.conflict("invalid_job_state", str(exc))
    if isinstance(exc, NotOwner):
        return errors.conflict("not_lease_owner", str(exc))
    if isinstance(exc, UploadNotFound):
        return errors.not_found("upload_not_found", str(exc))
    if isinstance(exc, DuplicateUpload):
        return ApiError(409, "duplicate_upload", str(exc), headers={"Location": f"/api/uploads/{exc.upload.id}"})
    return ApiError(500, "internal_error", "store error")
