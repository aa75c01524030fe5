"""What can go wrong with a job on the worker, by what should happen next and whose fault it is.

Each error carries a ``cause`` that the worker reports with a failure (``POST /api/worker/fail``):
``source`` when the job itself cannot be done (FFmpeg refuses the input, the master refuses the job),
``worker`` when this host is at fault (FFmpeg missing or crashing, cache disk full, transfers failing).
Only ``worker`` failures count toward the worker's quarantine on the master.
"""

from __future__ import annotations

from enum import Enum


class Cause(str, Enum):
    SOURCE = "source"
    WORKER = "worker"


class JobError(Exception):
    """A failure of the job's attempt; ``cause`` defaults to the class's and may be given per instance."""

    cause: Cause = Cause.WORKER

    def __init__(self, message: str = "", *, cause: Cause | None = None):
        super().__init__(message)
        if cause is not None:
            self.cause = cause


class RetryableError(JobError):
    """Transient: a network fault, a 5xx, a short body, a full cache. Worth another try, here or elsewhere."""


class MasterUnreachable(RetryableError):
    """The master did not answer (connection refused or reset, timeout) or its proxy said it is away
    (502/503/504): the master, not the job, is the problem, so a finished output is worth waiting for."""


class FatalError(JobError):
    """This job cannot succeed by trying again (FFmpeg cannot decode the source): fail it now."""

    cause = Cause.SOURCE


class ApiRejected(FatalError):
    """The master refused a request (4xx) for a reason that retrying will not change.

    A refusal is about the job (source missing, output exists, body too large), except an
    authentication refusal, which is about this worker's credentials.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"master answered {status} {code}: {message}",
                         cause=Cause.WORKER if status in (401, 403) else Cause.SOURCE)
        self.status = status
        self.code = code


class JobLost(ApiRejected):
    """The job is no longer ours (cancelled, re-leased, gone): stop working on it, report nothing."""


class Shutdown(Exception):
    """The worker is stopping: give the job back unfinished."""
