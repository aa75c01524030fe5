"""The API's error catalogue: every error a client can get, with its HTTP status."""

from __future__ import annotations

import errno


class ApiError(Exception):
    """An error rendered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def job_not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job with id {job_id!r}")


def invalid_state(job_id: str, status: str, wanted: str) -> ApiError:
    return ApiError(400, "invalid_job_state", f"job {job_id!r} is {status}, must be {wanted}")


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body exceeds the limit of {limit} bytes")


def insufficient_storage(reason: str) -> ApiError:
    return ApiError(507, "insufficient_storage", f"cannot store upload ({reason})")


def storage_error(exc: OSError) -> ApiError:
    """An OS error while storing a file: 507 when the disk is full, else 409 (the path cannot be written)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return insufficient_storage(exc.strerror or "disk full")
    return ApiError(409, "output_unwritable", f"cannot write there ({exc.strerror or exc})")
