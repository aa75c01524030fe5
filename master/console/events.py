"""/console/events: the console's live updates as Server-Sent Events.

Once a second the handler reads the queue's counts and the running jobs (at most the workers' slots) and sends
them when they differ from what it sent last, else a comment every 15 s to keep proxies from closing the stream.
The browser's ``console.js`` reconnects with back-off when the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tornado.iostream import StreamClosedError

from master.console.pages import ConsoleHandler, eta
from master.database import DatabaseUnavailable
from master.states import JobStatus

INTERVAL = 1.0
KEEPALIVE = 15.0
MAX_RUNNING = 500


class EventsHandler(ConsoleHandler):
    redirects_to_login = False
    def initialize(self, services) -> None:  # type: ignore[override]
        super().initialize(services)
        self._closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.set_header("X-Accel-Buffering", "no")
        self.write("retry: 2000\n\n")
        last, quiet_since = None, time.monotonic()
        while not self._closed:
            try:
                state = json.dumps(snapshot(self.store), separators=(",", ":"))
            except DatabaseUnavailable:
                state = json.dumps({"database": "unavailable"})
            if state != last:
                self.write(f"event: state\ndata: {state}\n\n")
                last, quiet_since = state, time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                self.write(": keep-alive\n\n")
                quiet_since = time.monotonic()
            try:
                await self.flush()
            except StreamClosedError:
                return
            await asyncio.sleep(INTERVAL)


def snapshot(store) -> dict[str, Any]:
    now = time.time()
    running, _total = store.list_jobs(status=JobStatus.PROCESSING, limit=MAX_RUNNING)
    return {"counts": store.counts_by_status(), "paused": store.queue_paused_at() is not None,
            "running": [{"id": job.id, "progress": round(job.progress or 0, 1), "speed": job.speed,
                         "rate": _rate(job.progress, job.claimed_at, now), "worker": job.worker_id,
                         "eta": _rounded(eta(job.progress, job.claimed_at, now))}
                        for job in running]}


def _rate(progress: float | None, claimed_at: float | None, now: float) -> float | None:
    """Percent per minute since the claim: the pace while FFmpeg's own speed is not reported yet."""
    if not progress or not claimed_at or now <= claimed_at:
        return None
    return round(progress / (now - claimed_at) * 60, 1)


def _rounded(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds))
