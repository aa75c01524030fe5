"""The worker's side of the job protocol: register, claim, heartbeat, fail, complete (shared storage), release.

Each call is one request; retrying one is the caller's choice (``worker.client.MasterClient``).
"""

from __future__ import annotations

from typing import Any

from converter_client.responses import json_answer
from converter_client.transport import CONTROL_TIMEOUT, MasterHttp
from converter_common import protocol


class WorkerControl:
    """The control calls of worker ``worker_id``; the answers are the master's JSON objects."""

    def __init__(self, http: MasterHttp, worker_id: str):
        self.http = http
        self.worker_id = worker_id

    def register(self, capabilities: dict[str, Any], concurrency: int, hostname: str,
                 schedule: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"worker_id": self.worker_id, "hostname": hostname, "capabilities": capabilities,
                "concurrency": concurrency}
        if schedule is not None:
            body["schedule"] = schedule  # worker.schedule: its windows, whether it is inside one, the next change
        return self._call(protocol.WORKER_REGISTER, body)

    def claim(self, wait: float, cache_free_bytes: int | None = None) -> dict[str, Any] | None:
        """The next job, waiting up to ``wait`` seconds for one; None if none came."""
        body: dict[str, Any] = {"worker_id": self.worker_id, "wait": wait}
        if cache_free_bytes is not None:
            body["cache_free_bytes"] = cache_free_bytes
        response = self.http.send("POST", protocol.WORKER_CLAIM, json=body, read_timeout=wait + CONTROL_TIMEOUT)
        if response.status_code == 204:
            return None
        return json_answer(response)

    def heartbeat(self, job_id: str, progress: float | None, conversion: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
        body: dict[str, Any] = {"worker_id": self.worker_id, "progress": progress}
        if conversion is not None:
            body["conversion"] = conversion
        return self._call(protocol.WORKER_HEARTBEAT, body, job_id)

    def fail(self, job_id: str, error: str, *, retryable: bool, cause: str) -> dict[str, Any]:
        return self._call(protocol.WORKER_FAIL, {"worker_id": self.worker_id, "error": error,
                                                 "retryable": retryable, "cause": cause}, job_id)

    def health_result(self, job_id: str, health: dict[str, Any]) -> dict[str, Any]:
        """A health check's result (``healthy``, ``errors``, ``error_count``, ``decoder``): the job completes."""
        return self._call(protocol.WORKER_HEALTH_RESULT, {"worker_id": self.worker_id, "health": health}, job_id)

    def complete(self, job_id: str, size: int, sha256_hex: str) -> dict[str, Any]:
        return self._call(protocol.WORKER_COMPLETE, {"worker_id": self.worker_id, "size": size,
                                                     "sha256": sha256_hex}, job_id)

    def release(self, job_id: str, reason: str) -> dict[str, Any]:
        return self._call(protocol.WORKER_RELEASE, {"worker_id": self.worker_id, "reason": reason}, job_id)

    def skip(self, job_id: str, reason: str) -> dict[str, Any]:
        return self._call(protocol.WORKER_SKIP, {"worker_id": self.worker_id, "reason": reason}, job_id)

    def keep_source(self, job_id: str, reason: str) -> dict[str, Any]:
        return self._call(protocol.WORKER_KEEP_SOURCE, {"worker_id": self.worker_id, "reason": reason}, job_id)

    def _call(self, route: str, body: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
        params = {"job_id": job_id} if job_id is not None else None
        return json_answer(self.http.send("POST", route, json=body, params=params))
