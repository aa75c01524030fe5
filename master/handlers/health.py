"""/healthz: the master is up and its database answers."""

from __future__ import annotations

from master.auth import Access
from master.handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    access = {"GET": Access.OPEN}

    def get(self) -> None:
        self.write_json({"status": "ok", "jobs": self.store.counts_by_status()})
