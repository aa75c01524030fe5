"""Every error a client can get, declared once: its code, its HTTP status and, where one fits, its message.

A handler raises ``KIND.error("what exactly went wrong")`` (or ``KIND.error()`` for the default
message); nothing outside this module builds an ``ApiError``. Codes that clients act on are spelled by
``converter_common.protocol``. ``CATALOGUE`` lists every kind; ``docs/openapi.yaml`` lists the same
codes under the Error schema's ``x-error-codes`` (tests/unit/test_error_catalogue.py holds the two
together). A code may have two kinds when two routes answer it with different statuses.
"""

from __future__ import annotations

import errno
from http import HTTPStatus
from dataclasses import dataclass, field
from typing import Mapping

from converter_common import protocol
from master.object_store import ObjectStoreError, ObjectStoreUnavailable
from master.store import (DuplicateJob, DuplicateUpload, InvalidTransition, JobNotFound, JobNotPending, NotOwner,
                          OutputBusy, StoreError, UploadNotFound, WorkerNotFound)


class ApiError(Exception):
    """An error rendered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class ErrorKind:
    status: int
    code: str
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def error(self, message: str | None = None, headers: Mapping[str, str] | None = None) -> ApiError:
        """The ``ApiError`` to raise: this kind, with ``message`` (or the default one)."""
        return ApiError(self.status, self.code, message or self.message or self.code.replace("_", " "),
                        {**self.headers, **(headers or {})})


RETRY_SOON = {"Retry-After": "5"}

# -- the request itself -------------------------------------------------------------------------
MALFORMED_REQUEST = ErrorKind(400, "malformed_request", "the request is not valid HTTP/1.1")  # master/http_server
URI_TOO_LONG = ErrorKind(414, "uri_too_long")
UNSUPPORTED_CONTENT_ENCODING = ErrorKind(415, "unsupported_content_encoding",
                                         "send request bodies without Content-Encoding")
BODY_TOO_LARGE = ErrorKind(413, "body_too_large")
UNAUTHORIZED = ErrorKind(401, "unauthorized", "a valid bearer token is required",
                         headers={"WWW-Authenticate": 'Bearer realm="converter"'})
FORBIDDEN = ErrorKind(403, "forbidden")
NOT_FOUND = ErrorKind(404, "not_found")
METHOD_NOT_ALLOWED = ErrorKind(405, "method_not_allowed")  # a method the route does not serve (Tornado's 405)
INVALID_JSON = ErrorKind(400, "invalid_json")
UNKNOWN_FIELD = ErrorKind(400, "unknown_field")
INVALID_FIELD = ErrorKind(400, "invalid_field")
INVALID_PARAMETER = ErrorKind(400, "invalid_parameter")
INVALID_HEADER = ErrorKind(400, "invalid_header")
UNSUPPORTED = ErrorKind(400, "unsupported")
INTERNAL_ERROR = ErrorKind(500, "internal_error")
OPENAPI_UNAVAILABLE = ErrorKind(404, "openapi_unavailable", "this installation does not include docs/openapi.yaml")

# -- jobs, workers, paths -----------------------------------------------------------------------
MISSING_JOB_ID = ErrorKind(400, "missing_job_id", "query parameter job_id is required")
INVALID_JOB_ID = ErrorKind(400, "invalid_job_id", "job id must be 1-128 characters of A-Z a-z 0-9 . _ -")
INVALID_WORKER_ID = ErrorKind(400, "invalid_worker_id", "worker id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
INVALID_STATUS = ErrorKind(400, "invalid_status")
UNKNOWN_PROFILE = ErrorKind(400, "unknown_profile")
JOB_NOT_FOUND = ErrorKind(404, protocol.JOB_NOT_FOUND)
JOB_NOT_PROCESSING = ErrorKind(400, protocol.INVALID_JOB_STATE)  # worker routes: the job is no longer processing
INVALID_JOB_STATE = ErrorKind(409, protocol.INVALID_JOB_STATE)  # user actions the job's state does not allow
NOT_LEASE_OWNER = ErrorKind(409, protocol.NOT_LEASE_OWNER)
DUPLICATE_JOB = ErrorKind(409, protocol.DUPLICATE_JOB)
OUTPUT_BUSY = ErrorKind(409, "output_busy")
OUTPUT_EXISTS = ErrorKind(409, "output_exists", "output_path already exists; remove it or choose another path")
OUTPUT_UNWRITABLE = ErrorKind(409, "output_unwritable")
INVALID_PATH = ErrorKind(400, "invalid_path")
SOURCE_NOT_FOUND = ErrorKind(400, "source_not_found")  # a submitted source_path
SOURCE_MISSING = ErrorKind(404, "source_not_found")  # a job's source, gone when a worker downloads it
OUTPUT_NOT_FOUND = ErrorKind(404, "output_not_found")
RANGE_NOT_SATISFIABLE = ErrorKind(416, "range_not_satisfiable")
INVALID_PRIORITY = ErrorKind(400, "invalid_priority",
                            f"priority must be an integer {protocol.PRIORITY_MIN}..{protocol.PRIORITY_MAX}")
JOB_NOT_PENDING = ErrorKind(409, "job_not_pending")  # a priority change of a job already claimed or ended
WORKER_NOT_FOUND = ErrorKind(404, "worker_not_found")

# -- receiving files ------------------------------------------------------------------------------
INSUFFICIENT_STORAGE = ErrorKind(507, "insufficient_storage", "not enough free space on the master for this upload")
TOO_MANY_UPLOADS = ErrorKind(503, "too_many_uploads", "the master is receiving its maximum of concurrent uploads",
                             headers=RETRY_SOON)
INVALID_MULTIPART = ErrorKind(400, "invalid_multipart")
DUPLICATE_PART = ErrorKind(400, "duplicate_part")
NOT_A_FILE_PART = ErrorKind(400, "not_a_file_part")
MISSING_VIDEO_PART = ErrorKind(400, "missing_video_part",
                               f"multipart body has no {protocol.UPLOAD_FIELD!r} file part")
INVALID_DIGEST = ErrorKind(400, "invalid_digest")
DIGEST_MISMATCH = ErrorKind(400, protocol.DIGEST_MISMATCH)
SIZE_MISMATCH = ErrorKind(400, "size_mismatch")
OUTPUT_MISSING = ErrorKind(400, "output_missing", "no converted file where shared-storage workers write it")

# -- the queue's database -------------------------------------------------------------------------
DATABASE_UNAVAILABLE = ErrorKind(503, "database_unavailable", "the job queue's database is unreachable; try again",
                                 headers=RETRY_SOON)

# -- object storage (storage.backend s3) ----------------------------------------------------------
OBJECT_STORE_UNAVAILABLE = ErrorKind(503, "object_store_unavailable", headers=RETRY_SOON)
OBJECT_STORE_REFUSED = ErrorKind(502, "object_store_refused")  # access denied, bucket missing or full
PARTS_INCOMPLETE = ErrorKind(409, protocol.PARTS_INCOMPLETE)  # completing an output upload whose parts are not all stored
NOT_WITH_BUCKET = ErrorKind(400, protocol.NOT_WITH_BUCKET)  # a route of the local backend (shared-storage completion)

# -- tus ------------------------------------------------------------------------------------------
UNSUPPORTED_TUS_VERSION = ErrorKind(412, "unsupported_tus_version", f"send Tus-Resumable: {protocol.TUS_VERSION}",
                                    headers={"Tus-Version": protocol.TUS_VERSION})
UNSUPPORTED_MEDIA_TYPE = ErrorKind(415, "unsupported_media_type",
                                   f"PATCH needs Content-Type: {protocol.TUS_CONTENT_TYPE}")
INVALID_METADATA = ErrorKind(400, "invalid_metadata")
INVALID_CHECKSUM = ErrorKind(400, "invalid_checksum")
UNSUPPORTED_CHECKSUM_ALGORITHM = ErrorKind(400, "unsupported_checksum_algorithm")
CHECKSUM_MISMATCH = ErrorKind(460, "checksum_mismatch", "Upload-Checksum does not match the PATCH body")
UPLOAD_NOT_FOUND = ErrorKind(404, "upload_not_found")
DUPLICATE_UPLOAD = ErrorKind(409, protocol.DUPLICATE_UPLOAD)
OFFSET_MISMATCH = ErrorKind(409, protocol.OFFSET_MISMATCH)
UPLOAD_BUSY = ErrorKind(409, protocol.UPLOAD_BUSY, "another PATCH of this upload is still receiving; HEAD and retry")
UPLOAD_STILL_SETTLING = ErrorKind(503, protocol.UPLOAD_BUSY, "the previous PATCH is still being stored",
                                  headers=RETRY_SOON)

CATALOGUE: tuple[ErrorKind, ...] = tuple(value for value in list(globals().values()) if isinstance(value, ErrorKind))


def code_for_status(status: int) -> str:
    """The code of an error Tornado raised itself (an unserved method, an uncaught exception)."""
    if status >= 500:
        return INTERNAL_ERROR.code
    generic = next((kind for kind in (METHOD_NOT_ALLOWED, NOT_FOUND) if kind.status == status), None)
    return generic.code if generic else HTTPStatus(status).phrase.lower().replace(" ", "_")


def from_object_store(exc: ObjectStoreError) -> ApiError:
    """What a client is told when the bucket failed: 503 (try again soon) or 502 (the store refused the master:
    access denied, no such bucket, quota). Never a client's fault."""
    if isinstance(exc, ObjectStoreUnavailable):
        return OBJECT_STORE_UNAVAILABLE.error(f"the object store did not answer ({exc.code}); try again")
    return OBJECT_STORE_REFUSED.error(f"the object store refused the master: {exc}")


def job_not_found(job_id: str) -> ApiError:
    return JOB_NOT_FOUND.error(f"no job with id {job_id!r}")


def job_not_processing(job_id: str, status: str) -> ApiError:
    return JOB_NOT_PROCESSING.error(f"job {job_id!r} is {status}, must be processing")


def not_lease_owner(job_id: str, worker_id: str) -> ApiError:
    return NOT_LEASE_OWNER.error(f"job {job_id!r} is not leased to worker {worker_id!r}")


def body_too_large(limit: int) -> ApiError:
    return BODY_TOO_LARGE.error(f"request body exceeds the limit of {limit} bytes")


def cannot_store(reason: str | None) -> ApiError:
    return INSUFFICIENT_STORAGE.error(f"cannot store upload ({reason})")


def storage_error(exc: OSError) -> ApiError:
    """An OS error while storing a file: 507 when the disk is full, else 409 (the path cannot be written)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return cannot_store(exc.strerror or "disk full")
    return OUTPUT_UNWRITABLE.error(f"cannot write there ({exc.strerror or exc})")


def from_store_error(exc: StoreError) -> ApiError:
    """What a refusal of the store means to the client."""
    if isinstance(exc, JobNotFound):
        return job_not_found(exc.job_id)
    if isinstance(exc, DuplicateUpload):
        return DUPLICATE_UPLOAD.error(str(exc), headers={"Location": f"{protocol.UPLOADS}/{exc.upload.id}"})
    for refusal, kind in _STORE_REFUSALS:
        if isinstance(exc, refusal):
            return kind.error(str(exc))
    return INTERNAL_ERROR.error("store error")


_STORE_REFUSALS = ((DuplicateJob, DUPLICATE_JOB), (OutputBusy, OUTPUT_BUSY), (InvalidTransition, INVALID_JOB_STATE),
                   (NotOwner, NOT_LEASE_OWNER), (UploadNotFound, UPLOAD_NOT_FOUND), (JobNotPending, JOB_NOT_PENDING),
                   (WorkerNotFound, WORKER_NOT_FOUND))
