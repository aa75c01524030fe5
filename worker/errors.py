"""What can go wrong with a job on the worker, by what should happen next."""

from __future__ import annotations


class RetryableError(Exception):
    """Transient: a network fault, a 5xx, a short body. Worth another try, here or on another worker."""


class FatalError(Exception):
    """This job cannot succeed by trying again (FFmpeg cannot decode the source): fail it now."""


class ApiRejected(FatalError):
    """The master refused a request (4xx) for a reason that retrying will not change."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"master answered {status} {code}: {message}")
        self.status = status
        self.code = code


class JobLost(ApiRejected):
    """The job is no longer ours (cancelled, re-leased, gone): stop working on it, report nothing."""


class Shutdown(Exception):
    """The worker is stopping: give the job back unfinished."""
