"""/api/webhooks/deliveries: the webhooks' outbox, newest first: each delivery's event, subscription, status
(pending, sending, delivered, failed), attempts and last error; with the counts by status."""

from __future__ import annotations

from master import errors
from master.auth import Access
from master.config import WEBHOOK_EVENTS
from master.handlers.base import BaseHandler

DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed")
MAX_PAGE = 1000


class WebhookDeliveriesHandler(BaseHandler):
    access = {"GET": Access.READ}

    def get(self) -> None:
        status = self.get_query_argument("status", None)
        if status is not None and status not in DELIVERY_STATUSES:
            raise errors.INVALID_STATUS.error(f"status must be one of {', '.join(DELIVERY_STATUSES)}")
        event = self.get_query_argument("event", None)
        if event is not None and event not in WEBHOOK_EVENTS:
            raise errors.INVALID_PARAMETER.error(f"event must be one of {', '.join(WEBHOOK_EVENTS)}")
        limit = self._int_argument("limit", 100, 1, MAX_PAGE)
        offset = self._int_argument("offset", 0, 0, 2**62)
        deliveries, total = self.store.list_webhook_deliveries(status=status, event_type=event, limit=limit,
                                                               offset=offset)
        self.write_json({"deliveries": deliveries, "total": total, "limit": limit, "offset": offset,
                         "counts": self.store.webhook_delivery_counts()})

    def _int_argument(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not raw.lstrip("-").isdecimal():
            raise errors.INVALID_PARAMETER.error(f"{name} must be an integer")
        value = int(raw)
        if not low <= value <= high:
            raise errors.INVALID_PARAMETER.error(f"{name} must be between {low} and {high}")
        return value
