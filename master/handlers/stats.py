"""/api/stats: space saved by completed jobs (source bytes minus output bytes), in total, by profile, by worker
and by day (UTC)."""

from __future__ import annotations

from master import errors
from master.auth import Access
from master.handlers.base import BaseHandler

MAX_DAYS = 3660


class StatsHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self) -> None:
        raw = self.get_query_argument("days", "30")
        if not raw.isdecimal() or not 1 <= int(raw) <= MAX_DAYS:
            raise errors.INVALID_PARAMETER.error(f"days must be an integer 1..{MAX_DAYS}")
        self.write_json({"days": int(raw), **self.store.space_saved(int(raw))})
