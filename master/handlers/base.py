"""What every handler shares: dependencies via ``initialize``, JSON in and out, one error renderer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import tornado.web

from converter_common.background_file_writer import BatchWriter
from converter_common.digest import parse_repr_digest
from converter_common.protocol import WORKER_ID_HEADER
from converter_common.ratelimit import TokenBucket
from master import errors
from master.auth import Access, Tokens
from master.config import MasterConfig
from master.console.session import from_browser, has_session
from master.database import DatabaseUnavailable
from master.errors import ApiError
from master.intake import JobIntake
from master.metrics import MasterMetrics
from master.object_store import ObjectStoreError
from master.storage import Storage
from master.states import JobStatus
from master.store import Job, JobStore, StoreError
from master.uploads import UploadRegistry
from master.wakeup import WakeUpSignal

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONTROL_BODY_LIMIT = 1 << 20  # every route but the uploads: a JSON document of a few hundred bytes
MAX_URL_LENGTH = 8192
DECIMAL = re.compile(r"[0-9]{1,19}")
WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


@dataclass(frozen=True)
class Services:
    """The master's dependencies, handed to each handler through ``initialize``; nothing in it changes."""

    config: MasterConfig
    store: JobStore
    wakeup: WakeUpSignal
    metrics: MasterMetrics
    uploads: UploadRegistry
    intake: JobIntake
    storage: Storage
    tokens: Tokens = Tokens()
    # server.outbound_limit: one token bucket shared by every download; None when unlimited
    outbound: TokenBucket | None = None
    # builds what writes and hashes a received body (BatchWriter's signature); bench/null_master.py swaps
    # in a null sink to measure the software overhead alone
    receive_writer: Callable[..., BatchWriter] = BatchWriter


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Every route streams its body, so that ``prepare`` authenticates and sets the body limit before a byte
    of it is read; routes that are not uploads keep what arrives, up to ``CONTROL_BODY_LIMIT``."""

    # Who may call each method; handlers override this table.
    access: dict[str, Access] = {}
    # The ``handler`` label of the request-duration metric: the class name, unless a renamed class keeps the
    # name its series had before (dashboards and alerts select on it).
    metric_label: str | None = None
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
            raise errors.URI_TOO_LONG.error(f"the URL exceeds {MAX_URL_LENGTH} bytes")
        if self.request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise errors.UNSUPPORTED_CONTENT_ENCODING.error()

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
        tokens = self.services.tokens
        if self.request.method not in ("GET", "HEAD", "OPTIONS") and from_browser(self):
            try:
                super().check_xsrf_cookie()
            except tornado.web.HTTPError:
                raise errors.FORBIDDEN.error("a browser's request must carry the XSRF token (X-XSRFToken)") from None
        if not self.request.headers.get("Authorization") and has_session(self, tokens):
            return  # the console's session: the admin's, its XSRF token checked before (check_xsrf_cookie)
        allowed = tokens.allows(needed, self.request.headers.get("Authorization"))
        if allowed is None:
            raise errors.UNAUTHORIZED.error()
        if not allowed:
            raise errors.FORBIDDEN.error(f"this token may not {self.request.method} {self.request.path}")

    def check_xsrf_cookie(self) -> None:
        """Workers, curl and the CLI send no XSRF token; a browser's request (the console's) must, which
        ``authorize`` checks once the request's limits are set, as it does a missing token."""

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
            raise errors.INVALID_JSON.error(f"request body is not valid JSON ({exc.__class__.__name__})")
        if not isinstance(data, dict):
            raise errors.INVALID_JSON.error("request body must be a JSON object")
        return data

    def job_id_argument(self) -> str:
        job_id = self.get_query_argument("job_id", None, strip=False)
        if job_id is None:
            raise errors.MISSING_JOB_ID.error()
        return check_job_id(job_id)

    def worker_id_header(self) -> str | None:
        """The calling worker's id, when it says (curl users of the seed endpoints do not)."""
        value = self.request.headers.get(WORKER_ID_HEADER)
        return None if value is None else check_worker_id(value)

    def repr_digest_header(self) -> bytes | None:
        """The whole file's SHA-256 a ``Repr-Digest`` header announces (RFC 9530), if the request sends one."""
        try:
            return parse_repr_digest(self.request.headers.get("Repr-Digest"))
        except ValueError as exc:
            raise errors.INVALID_DIGEST.error(f"Repr-Digest: {exc}") from None

    def processing_job(self, job_id: str) -> Job:
        """The job, which must exist (404) and be processing (400), leased to the caller if it names itself."""
        job = self.store.get_job(job_id)
        if job.status is not JobStatus.PROCESSING:
            raise errors.job_not_processing(job_id, job.status.value)
        worker_id = self.worker_id_header()
        if worker_id is not None and job.worker_id != worker_id:
            raise errors.not_lease_owner(job_id, worker_id)
        return job

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StoreError):
            e = errors.from_store_error(e)
        elif isinstance(e, ObjectStoreError):
            e = errors.from_object_store(e)
        elif isinstance(e, DatabaseUnavailable):
            e = errors.DATABASE_UNAVAILABLE.error()
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
        code = errors.code_for_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": code, "message": message}) + "\n")


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:  # no authentication: there is nothing here to protect
        self.limit_request()
        raise errors.NOT_FOUND.error(f"no route for {self.request.method} {self.request.path}")


def check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise errors.INVALID_JOB_ID.error()
    return job_id


def check_worker_id(worker_id: object) -> str:
    if not isinstance(worker_id, str) or not WORKER_ID.fullmatch(worker_id):
        raise errors.INVALID_WORKER_ID.error()
    return worker_id


def is_number(value: object, low: float, high: float) -> bool:
    """A JSON number (not a boolean) within [low, high]: NaN, infinities and huge integers are not."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")
