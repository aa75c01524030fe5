"""/api/worker/claim: hand the next pending job to a worker, long-polling until one comes."""

from __future__ import annotations

import tornado.gen
import tornado.ioloop

from converter_common.profiles import definition_of
from converter_common.protocol import CLAIMS_PAUSED_HEADER, PROFILE_DEFINITION
from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler, check_worker_id, is_number

# Waiters re-check at least this often: a job whose retry delay ends wakes nobody by itself.
RECHECK_SECONDS = 1.0
MAX_WAIT = 86400  # what a worker may ask for; the wait is capped at jobs.max_claim_wait anyway


class ClaimHandler(BaseHandler):
    access = {"POST": Access.WORKER}

    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._client_gone = False

    def on_connection_close(self) -> None:
        self._client_gone = True
        super().on_connection_close()

    async def post(self) -> None:
        body = self.json_body()
        worker_id = check_worker_id(body.get("worker_id"))
        wait = body.get("wait", 0)
        if not is_number(wait, 0, MAX_WAIT):
            raise errors.INVALID_FIELD.error(f"wait must be a number of seconds 0..{MAX_WAIT}")
        room = body.get("cache_free_bytes")
        if room is not None and not (isinstance(room, int) and is_number(room, 0, 2**62)):
            raise errors.INVALID_FIELD.error("cache_free_bytes must be an integer 0..2^62")
        loop = tornado.ioloop.IOLoop.current()
        deadline = loop.time() + min(float(wait), self.config.jobs.max_claim_wait)
        # Room for the source and an output of about the same size.
        max_source = room // 2 if room is not None else None
        lease = self.config.jobs.lease_seconds
        quarantined, job = self.store.check_in_and_claim(worker_id, lease, cache_free_bytes=room,
                                                         max_source_size=max_source)
        if quarantined is not None:
            await self._wait_out(deadline)  # a quarantined worker waits as if the queue were empty
            self.set_header("X-Quarantined-Until", f"{quarantined:.0f}")
            self._no_job()
            return
        while not self._client_gone:
            if job is None:
                job = self.store.claim_next(worker_id, lease, max_source_size=max_source)
            if job is not None:
                self.services.metrics.job_claimed(job)
                self.write_json(self._assignment(job))
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await self.services.wakeup.wait(min(remaining, RECHECK_SECONDS))
            except TimeoutError:
                pass
        paused = self.store.claims_paused(worker_id)
        if paused is not None:
            self.set_header(CLAIMS_PAUSED_HEADER, paused)
        self._no_job()

    def _assignment(self, job) -> dict:
        """The job, and with the bucket backend how its files move (``bucket``: presigned URLs, parts cut by
        ``protocol.part_size_for`` from ``part_size``). A configured profile's full definition goes with it (the
        worker builds the profile from it); a built-in one is named only. A profile this master no longer has
        (configured when the job was submitted, gone since) goes without: the worker fails the job as unknown."""
        payload = job.to_dict()
        profile = self.config.profiles.get(job.profile)
        if profile is not None and profile.base:
            payload[PROFILE_DEFINITION] = definition_of(profile)
        if self.services.storage.in_bucket:
            payload["bucket"] = {"part_size": self.config.storage.s3.part_size}
        return payload

    def _no_job(self) -> None:
        if not self._client_gone:
            self.set_status(204)
            self.finish()

    async def _wait_out(self, deadline: float) -> None:
        loop = tornado.ioloop.IOLoop.current()
        while not self._client_gone and loop.time() < deadline:
            await tornado.gen.sleep(min(RECHECK_SECONDS, deadline - loop.time()))
