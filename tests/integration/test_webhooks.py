"""Webhooks end to end: a real master process, a real worker with FFmpeg, and a real receiving HTTP server on
loopback that records every request; the receiver is cut off mid-run and the master restarted while deliveries
are pending. Every wait is on a condition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from master.webhooks import verify
from tests.integration.test_cli_queue_control import converterctl
from tests.fixtures import VENV_BIN, Cluster, ffmpeg_available, free_port, make_clip, wait_for, write_yaml

pytestmark = pytest.mark.integration

SECRET = b"s3cret-key-for-tests"


class Receiver:
    """A webhook receiver on a fixed loopback port: /ok answers 204, /fail 500, /hang answers after 3 s. It can be
    stopped (connections refused) and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                              "at": time.time()})
                if self.path == "/hang":
                    time.sleep(3)
                self.send_response(204 if self.path == "/ok" else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self, path: str = "/ok") -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def secret_file(tmp: Path) -> Path:
    path = tmp / "webhook-secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


def with_webhooks(cluster: Cluster, webhooks: dict) -> None:
    """The cluster's master, restarted with ``webhooks`` in its config."""
    data = yaml.safe_load(cluster.master_config.read_text())
    write_yaml(cluster.master_config, {**data, "webhooks": webhooks})
    cluster.restart_master(signal.SIGTERM)


def deliveries(cluster: Cluster, **params) -> dict:
    response = requests.get(f"{cluster.url}/api/webhooks/deliveries", params={"limit": 1000, **params}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def events_received(receiver: Receiver) -> list[tuple[str, str | None]]:
    out = []
    for request in receiver.received():
        body = json.loads(request["body"])
        assert verify(SECRET, request["headers"]["X-Converter-Signature"], request["body"]), request["headers"]
        assert request["headers"]["X-Converter-Event-Id"] == body["id"]
        assert request["headers"]["X-Converter-Event"] == body["type"]
        subject = body["job"]["id"] if "job" in body else body["worker"]["id"] if "worker" in body else None
        out.append((body["type"], subject))
    return out


@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_webhooks_arrive_signed_once_each_through_a_receiver_outage_and_a_master_restart(tmp_path, receiver,
                                                                                         backend, request):
    database = {"url": request.getfixturevalue("postgres").new_database()} if backend == "postgres" else None
    cluster = Cluster(tmp_path, database=database, lease_seconds=3, max_claim_wait=2, max_attempts=1)
    try:
        with_webhooks(cluster, {
            "timeout": "1s", "backoff": "200ms", "max_backoff": "1s", "retry_for": "5m", "poll_interval": "200ms",
            "subscriptions": [{"name": "ops", "url": receiver.url("/ok"), "secret_file": str(secret_file(tmp_path)),
                               "events": ["job.completed", "job.failed", "job.cancelled", "worker.lost",
                                          "queue.drained"]}]})
        clip = make_clip(tmp_path / "clip.mp4", seconds=1, size="320x240", audio=False)
        cluster.put_source("in/good.mp4", clip)
        (cluster.root / "in" / "broken.mp4").write_bytes(b"not a video" * 100)
        cluster.submit("in/good.mp4", "out/good.mp4", "good")
        cluster.submit("in/broken.mp4", "out/broken.mp4", "broken")
        cluster.submit("in/good.mp4", "out/dropped.mp4", "dropped")
        assert requests.post(f"{cluster.url}/api/jobs/dropped/cancel", timeout=10).status_code == 200
        worker = cluster.add_worker("w1")
        cluster.wait_status("good", "completed", timeout=120)
        cluster.wait_status("broken", "failed", timeout=120)
        first = {("job.cancelled", "dropped"), ("job.completed", "good"), ("job.failed", "broken"),
                 ("queue.drained", None)}
        wait_for(lambda: set(events_received(receiver)) == first, timeout=30, what="the first events")
        body = json.loads(receiver.received()[0]["body"])
        assert body["job"] == requests.get(f"{cluster.url}/api/jobs/{body['job']['id']}", timeout=10).json()

        # the receiver goes away: the next job's events wait in the outbox, retried
        receiver.stop()
        cluster.submit("in/good.mp4", "out/again.mp4", "again")
        cluster.wait_status("again", "completed", timeout=120)
        wait_for(lambda: [d for d in deliveries(cluster)["deliveries"] if d["job_id"] == "again"
                          and d["attempts"] >= 2 and d["status"] == "pending"], timeout=30, what="retries")
        # ... and the master is killed while they are pending; they survive it in the database
        cluster.restart_master(signal.SIGKILL)
        pending = deliveries(cluster)["counts"]
        assert pending["pending"] + pending["sending"] == 2 and pending["delivered"] == 4, pending
        receiver.start()
        second = first | {("job.completed", "again")}
        wait_for(lambda: set(events_received(receiver)) >= second
                 and sum(1 for e in events_received(receiver) if e[0] == "queue.drained") == 2,
                 timeout=30, what="the pending deliveries after the outage")

        # the worker stops: once it has been silent for the online window it is announced lost
        worker.stop()
        wait_for(lambda: ("worker.lost", "w1") in events_received(receiver), timeout=30, what="worker.lost")

        received = events_received(receiver)
        ids = [json.loads(r["body"])["id"] for r in receiver.received()]
        assert len(ids) == len(set(ids)) == 7, received  # each event once
        assert sorted(e for e in received if e[0] != "queue.drained") == sorted(
            [("job.cancelled", "dropped"), ("job.completed", "good"), ("job.failed", "broken"),
             ("job.completed", "again"), ("worker.lost", "w1")])
        listed = deliveries(cluster)
        assert listed["counts"] == {"pending": 0, "sending": 0, "delivered": 7, "failed": 0}
        assert len({d["event_id"] for d in listed["deliveries"]}) == 7
        assert all(d["delivered_at"] is not None and d["last_status"] == 204 for d in listed["deliveries"])
        again = [d for d in listed["deliveries"] if d["job_id"] == "again"]
        assert again and again[0]["attempts"] >= 3  # refused at least twice, then delivered
        table = converterctl(cluster.url, "webhooks", "deliveries", "--event", "job.completed")
        assert table.returncode == 0, table.stderr
        assert "again" in table.stdout and "delivered" in table.stdout and "2 of 2" in table.stdout
        data = json.loads(converterctl(cluster.url, "--json", "webhooks", "--status", "delivered").stdout)
        assert data["total"] == 7
        metrics = requests.get(f"{cluster.url}/metrics", timeout=10).text
        assert 'converter_master_webhook_deliveries{status="delivered"} 7.0' in metrics
        assert 'converter_master_webhook_attempts_total{event="job.completed",outcome="delivered",' \
               'subscription="ops"}' in metrics
    finally:
        cluster.stop()


def test_a_receiver_that_fails_or_hangs_is_retried_then_the_delivery_ends_failed(tmp_path, receiver):
    cluster = Cluster(tmp_path)
    try:
        secret = str(secret_file(tmp_path))
        with_webhooks(cluster, {
            "timeout": "500ms", "backoff": "200ms", "max_backoff": "400ms", "retry_for": "2s",
            "poll_interval": "100ms",
            "subscriptions": [{"name": "fails", "url": receiver.url("/fail"), "secret_file": secret,
                               "events": ["job.cancelled"]},
                              {"name": "hangs", "url": receiver.url("/hang"), "secret_file": secret,
                               "events": ["job.cancelled"]}]})
        (cluster.root / "in").mkdir(parents=True, exist_ok=True)
        (cluster.root / "in" / "a.mp4").write_bytes(b"x" * 1000)
        cluster.submit("in/a.mp4", "out/a.mp4", "a")
        assert requests.post(f"{cluster.url}/api/jobs/a/cancel", timeout=10).status_code == 200
        wait_for(lambda: deliveries(cluster)["counts"]["failed"] == 2, timeout=30, what="both deliveries failed")
        listed = deliveries(cluster, status="failed")["deliveries"]
        by_name = {d["subscription"]: d for d in listed}
        assert by_name["fails"]["last_status"] == 500 and by_name["fails"]["attempts"] >= 2
        assert by_name["hangs"]["last_status"] is None and by_name["hangs"]["attempts"] >= 2
        assert "imeout" in by_name["hangs"]["last_error"]
        for d in listed:  # given up within the bounded time (retry_for, plus one attempt and a poll)
            assert d["updated_at"] - d["created_at"] < 2 + 0.5 + 1.5
        assert len(receiver.received("/fail")) == by_name["fails"]["attempts"]
        assert len(receiver.received("/hang")) == by_name["hangs"]["attempts"]
        assert all(verify(SECRET, r["headers"]["X-Converter-Signature"], r["body"], now=r["at"])
                   for r in receiver.requests)
        metrics = requests.get(f"{cluster.url}/metrics", timeout=10).text
        assert 'converter_master_webhook_deliveries{status="failed"} 2.0' in metrics
        assert 'outcome="failed",subscription="hangs"} 1.0' in metrics
    finally:
        cluster.stop()


@pytest.mark.parametrize("subscription, expected", [
    ({"url": "ftp://example.com/hook"}, "webhooks.subscriptions[0].url: must be an http:// or https:// URL"),
    ({"events": ["job.exploded"]}, "webhooks.subscriptions[0].events: unknown event 'job.exploded'"),
    ({"secret_mode": 0o644}, "secret_file: " + "{secret} is readable by others"),
])
def test_a_bad_webhook_config_is_one_line_naming_the_key(tmp_path, subscription, expected):
    secret = secret_file(tmp_path)
    secret.chmod(subscription.pop("secret_mode", 0o600))
    config = write_yaml(tmp_path / "master.yaml", {
        "database": {"path": str(tmp_path / "m.db")}, "storage": {"root": str(tmp_path / "storage")},
        "webhooks": {"subscriptions": [{"name": "ops", "url": "https://example.com/hook", "secret_file": str(secret),
                                        "events": ["job.completed"], **subscription}]}})
    result = subprocess.run([str(VENV_BIN / "converter-master"), "--config", str(config), "--check-config"],
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = expected.replace("{secret}", str(secret))
    assert len(lines) == 1 and lines[0].startswith("config error: ") and expected in lines[0], result.stderr
