"""/metrics: the master's Prometheus exposition."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder

from master.auth import Access
from master.handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    access = {"GET": Access.OPEN}

    def get(self) -> None:
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(self.services.metrics.registry))
