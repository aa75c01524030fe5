"""/healthz: the master is up and its database answers (503 ``database_unavailable`` while it does not, so a
load balancer takes the master out until the database is back)."""

from __future__ import annotations

from master import errors
from master.auth import Access
from master.database import DatabaseUnavailable
from master.handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    access = {"GET": Access.OPEN}

    def get(self) -> None:
        try:
            counts = self.store.counts_by_status()
        except DatabaseUnavailable:
            raise errors.DATABASE_UNAVAILABLE.error("not ready: the job queue's database is unreachable") from None
        self.write_json({"status": "ok", "jobs": counts})
