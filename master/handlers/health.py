"""/healthz: the master is up and its database answers."""

from __future__ import annotations

from master.handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "jobs": self.store.counts_by_status()})
