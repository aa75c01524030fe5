"""Webhooks: events from the database's outbox, signed and POSTed to each subscription, at least once.

An event is written in the database in the statement that causes it (a job's status change, by a trigger), or by a
guarded INSERT made once (worker lost, queue drained; ``JobStore.note_lost_workers`` / ``note_queue_drained``). Each
master's ``WebhookDispatcher`` then, on its own IOLoop:

1. fans every new event out into one delivery per subscription that wants it (a guarded UPDATE of the event: one
   master does it), with the JSON body fixed then, so every attempt sends the same bytes;
2. claims the deliveries due with one guarded UPDATE (``sending``, claimed by this master until its attempt's
   timeout has passed), so two masters never send one delivery at once; a claim whose master died runs out and
   the delivery is claimed again;
3. sends each with Tornado's ``AsyncHTTPClient`` (never blocking the IOLoop), ``webhooks.timeout`` per attempt,
   and marks it delivered (a 2xx answer) with a guarded UPDATE naming this master and attempt, so it is marked
   delivered once; otherwise it waits ``backoff`` doubled per attempt (up to ``max_backoff``) and is tried again
   until ``retry_for`` after the event, then ends ``failed``.

Signature: ``X-Converter-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

import tornado.httpclient
import tornado.ioloop

from master.config import WebhooksConfig
from master.database import DatabaseUnavailable
from master.store import JobNotFound, JobStore, WorkerNotFound

log = logging.getLogger("converter.master")

SIGNATURE_HEADER = "X-Converter-Signature"
EVENT_HEADER = "X-Converter-Event"
EVENT_ID_HEADER = "X-Converter-Event-Id"
LOST_HORIZON = 3600.0  # a worker gone longer than this (plus the online window) when first noticed is not announced


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Converter-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does (``docs/api.md``): the HMAC matches and the timestamp is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    now = time.time() if now is None else now
    return hmac.compare_digest(expected, fields.get("v1", "")) and abs(now - timestamp) <= tolerance


class WebhookDispatcher:
    """Fans out, claims and sends this master's share of the deliveries, every ``poll_interval``."""

    def __init__(self, config: WebhooksConfig, store: JobStore, metrics: Any, online_window: Callable[[], float],
                 claimer: str | None = None) -> None:
        self.config, self.store, self.metrics, self.online_window = config, store, metrics, online_window
        self.claimer = claimer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.secrets = {s.name: s.secret() for s in config.subscriptions}
        self._busy = False
        self._next_prune = 0.0
        self._client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=config.concurrency)
        self._timer = tornado.ioloop.PeriodicCallback(self._tick, config.poll_interval * 1000)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._client.close()

    async def _tick(self) -> None:
        if self._busy:
            return
        self._busy = True
        first_miss = self.store.available  # the database logs its outage; one line here says webhooks wait for it
        try:
            await self.run_once()
        except DatabaseUnavailable as exc:
            (log.warning if first_miss else log.debug)("webhooks: round skipped: %s", exc)
        finally:
            self._busy = False

    async def run_once(self, now: float | None = None) -> int:
        """One round: new events noted and fanned out, the deliveries due sent; how many were sent."""
        now = time.time() if now is None else now
        window = self.online_window()
        self.store.note_lost_workers(online_since=now - window, horizon=now - window - LOST_HORIZON, now=now)
        self.store.note_queue_drained(now=now)
        self.fan_out(now)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 600
            self.store.prune_webhooks(now - self.config.retention)
        if not self.config.subscriptions:
            return 0
        deliveries = self.store.claim_webhook_deliveries(self.claimer, lease=self.config.timeout + 5.0,
                                                         limit=self.config.concurrency, now=now)
        await asyncio.gather(*(self.send(delivery) for delivery in deliveries))
        return len(deliveries)

    def fan_out(self, now: float) -> None:
        wanted = {s.name: s for s in self.config.subscriptions}
        for event in self.store.webhook_events_to_fan_out():
            targets = [s for s in wanted.values() if event["type"] in s.events]
            body = json.dumps(self.event_body(event) if targets else {}, separators=(",", ":"))
            self.store.fan_out_webhook_event(
                event["id"], [(uuid.uuid4().hex, s.name, s.url, body) for s in targets], event_type=event["type"],
                job_id=event["job_id"], worker_id=event["worker_id"], now=now)

    def event_body(self, event: dict[str, Any]) -> dict[str, Any]:
        """What each subscription gets: the event's id, type and time, and the job (as ``GET /api/jobs/<id>``
        shows it when the event is fanned out), the worker, or the queue's counts."""
        body: dict[str, Any] = {"id": event["id"], "type": event["type"], "created_at": event["created_at"]}
        if event["job_id"] is not None:
            try:
                body["job"] = self.store.get_job(event["job_id"]).to_dict()
            except JobNotFound:
                body["job"] = {"id": event["job_id"]}
        if event["worker_id"] is not None:
            try:
                worker = self.store.get_worker(event["worker_id"])
                body["worker"] = {"id": worker.id, "hostname": worker.hostname, "last_seen_at": event["ref"]}
            except WorkerNotFound:
                body["worker"] = {"id": event["worker_id"], "last_seen_at": event["ref"]}
        if event["type"] == "queue.drained":
            body["jobs"] = self.store.counts_by_status()
        return body

    async def send(self, delivery: dict[str, Any]) -> None:
        body = delivery["body"].encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "converter-master",
                   SIGNATURE_HEADER: signature(self.secrets.get(delivery["subscription"], b""), timestamp, body),
                   EVENT_HEADER: delivery["event_type"], EVENT_ID_HEADER: delivery["event_id"],
                   "X-Converter-Delivery": delivery["id"]}
        request = tornado.httpclient.HTTPRequest(
            delivery["url"], method="POST", body=body, headers=headers, connect_timeout=self.config.timeout,
            request_timeout=self.config.timeout, follow_redirects=False)
        started = time.monotonic()
        code: int | None = None
        try:
            response = await self._client.fetch(request, raise_error=False)
            code = response.code if response.code != 599 else None
            error = None if 200 <= response.code < 300 else (
                f"HTTP {response.code}" if code is not None else str(response.error or "no answer"))
        except Exception as exc:  # any failure to send is the attempt's outcome, never the dispatcher's
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - started
        self.metrics.webhook_attempt_seconds.observe(seconds)
        attempt, now = delivery["attempts"], time.time()
        try:
            self._record(delivery, attempt, code, error, now)
        except DatabaseUnavailable as exc:  # the claim runs out; the delivery is sent again (at least once)
            log.warning("webhooks: delivery %s: outcome not recorded: %s", delivery["id"], exc)

    def _record(self, delivery: dict[str, Any], attempt: int, code: int | None, error: str | None,
                now: float) -> None:
        name, event_type = delivery["subscription"], delivery["event_type"]
        if error is None:
            if self.store.webhook_delivered(delivery["id"], self.claimer, attempt, code or 200, now=now):
                self.metrics.webhook_attempts.labels(name, event_type, "delivered").inc()
            return
        delay = min(self.config.backoff * 2 ** (attempt - 1), self.config.max_backoff)
        retry_at: float | None = now + delay
        if retry_at > delivery["created_at"] + self.config.retry_for:
            retry_at = None
        if self.store.webhook_attempt_failed(delivery["id"], self.claimer, attempt, error=error, status_code=code,
                                            retry_at=retry_at, now=now):
            outcome = "failed" if retry_at is None else "retried"
            self.metrics.webhook_attempts.labels(name, event_type, outcome).inc()
            (log.warning if retry_at is None else log.info)(
                "webhook %s of event %s to %s: %s (attempt %d)%s", delivery["id"], delivery["event_id"], name, error,
                attempt, "; given up" if retry_at is None else f"; again in {delay:.1f} s")
