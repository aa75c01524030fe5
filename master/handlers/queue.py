"""/api/queue: the whole queue's state (paused or not, jobs by status); /api/queue/pause and /resume.

A pause is a row in the database (``queue_pause``), so it holds for every master and across restarts; while it is
there every claim gets nothing (checked inside the claim's own statement), and running jobs go on to the end.
"""

from __future__ import annotations

from typing import Any

from master.auth import Access
from master.handlers.base import BaseHandler


class QueueHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self) -> None:
        self.write_json(queue_state(self))


class QueuePauseHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    def post(self) -> None:
        self.store.pause_queue()
        self.write_json(queue_state(self))


class QueueResumeHandler(BaseHandler):
    access = {"POST": Access.ADMIN}

    def post(self) -> None:
        self.store.resume_queue()
        self.services.wakeup.send()  # this master's parked claims look again now
        self.write_json(queue_state(self))


def queue_state(handler: BaseHandler) -> dict[str, Any]:
    paused_at = handler.store.queue_paused_at()
    return {"paused": paused_at is not None, "paused_at": paused_at, "jobs": handler.store.counts_by_status()}
