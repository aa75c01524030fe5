"""/api/worker/health-result?job_id=: the lease holder of a health-check job reports what decoding its source found.

The job completes with the result as its ``health`` (a corrupt source is a result: healthy false, FFmpeg's errors
listed, never retried); no output exists or is ever stored for it. A job that has an output path (a conversion)
cannot complete this way (409 ``invalid_job_state``).
"""

from __future__ import annotations

import logging
from typing import Any

from converter_common.protocol import HEALTH_DECODERS, HEALTH_MAX_ERRORS, HEALTH_MAX_LINE
from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler, check_worker_id
from master.store import GuardFailed

log = logging.getLogger("converter.master")
HEALTH_FIELDS = {"healthy", "errors", "error_count", "decoder", "fallback"}


class HealthResultHandler(BaseHandler):
    access = {"POST": Access.WORKER}

    def post(self) -> None:
        job_id = self.job_id_argument()
        body = self.json_body()
        worker_id = check_worker_id(body.get("worker_id"))
        health = health_fields(body.get("health"))
        try:
            job = self.store.complete_health_check(job_id, health, worker_id=worker_id)
        except GuardFailed:
            raise errors.INVALID_JOB_STATE.error(f"job {job_id!r} is a conversion, not a health check: it completes"
                                                 " with its output") from None
        self.services.metrics.health_checked(job)
        if health["healthy"]:
            log.info("job %s: health check: healthy (%s decode)", job.id, health["decoder"])
        else:
            log.warning("job %s: health check: %d error(s) (%s decode), first: %s", job.id, health["error_count"],
                        health["decoder"], health["errors"][0] if health["errors"] else "-")
        self.write_json(job.to_dict())


def health_fields(value: object) -> dict[str, Any]:
    """The result as the job records it, checked field by field; errors bounded in number and length."""
    if not isinstance(value, dict) or set(value) - HEALTH_FIELDS or "healthy" not in value:
        raise errors.INVALID_FIELD.error(f"health must be an object with healthy and any of {sorted(HEALTH_FIELDS)}")
    healthy, lines = value["healthy"], value.get("errors", [])
    if not isinstance(healthy, bool):
        raise errors.INVALID_FIELD.error("health.healthy must be true or false")
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise errors.INVALID_FIELD.error("health.errors must be a list of strings")
    if healthy and lines:
        raise errors.INVALID_FIELD.error("a healthy source has no errors")
    if not healthy and not lines:
        raise errors.INVALID_FIELD.error("an unhealthy source needs at least one error")
    count = value.get("error_count", len(lines))
    if isinstance(count, bool) or not isinstance(count, int) or not len(lines) <= count <= 2**62:
        raise errors.INVALID_FIELD.error("health.error_count must be an integer >= the number of errors listed")
    decoder = value.get("decoder", "cpu")
    if decoder not in HEALTH_DECODERS:
        raise errors.INVALID_FIELD.error(f"health.decoder must be one of {', '.join(HEALTH_DECODERS)}")
    fallback = value.get("fallback")
    if fallback is not None and not isinstance(fallback, str):
        raise errors.INVALID_FIELD.error("health.fallback must be a string")
    return {"healthy": healthy, "errors": [line[:HEALTH_MAX_LINE] for line in lines[:HEALTH_MAX_ERRORS]],
            "error_count": count, "decoder": decoder, "fallback": fallback[:500] if fallback else None}
