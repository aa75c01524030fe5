"""What can go wrong in a transfer, independent of who asked for it.

The shared client raises these; the worker (``worker.client``) and converterctl (``converterctl.client``)
each turn them into their own errors at their boundary (a retryable job error or ``Shutdown`` on the
worker, an exit status in converterctl), so the same answer from the master is judged in one place.
"""

from __future__ import annotations

import requests

ERROR_BODY_CHARS = 200


class TransferError(Exception):
    """Anything the shared client raises on purpose."""


class MasterAway(TransferError):
    """No answer from the master (connection refused or reset, timeout)."""


class TransferCut(TransferError):
    """Worth another try: a request that failed on the way, a short body, offsets that disagree."""


class DigestMismatch(TransferError):
    """A download's bytes do not match the master's ``Repr-Digest``; the partial copy was dropped."""


class Cancelled(TransferError):
    """The caller's cancel flag was set while a body was being sent or received."""


class Refused(TransferError):
    """The master answered with an error status; ``response`` is the answer, ``code`` its error code."""

    def __init__(self, response: requests.Response, message: str | None = None):
        self.response = response
        self.status = response.status_code
        self.code = error_code(response)
        super().__init__(message or f"master answered {self.status} {self.code}")


class UploadConflict(Refused):
    """A tus 409 that a fresh HEAD resolves (``protocol.TUS_RESUME_CODES``): resume from the master's offset."""


class UploadDropped(Refused):
    """The master computed another SHA-256 than the one sent and dropped the tus upload: start a new one."""


def error_payload(response: requests.Response) -> dict | None:
    """The master's ``{"error", "message"}`` body, or None for any other body."""
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and payload.get("error") else None


def error_code(response: requests.Response) -> str:
    payload = error_payload(response)
    return str(payload["error"]) if payload is not None else "http_error"


def body_start(response: requests.Response) -> str:
    """The first characters of a body, whitespace collapsed: for messages about unexpected answers."""
    return " ".join(response.text[:ERROR_BODY_CHARS].split())
