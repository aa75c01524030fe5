"""PostgreSQL restarted under a running master: it reports not ready while the database is away, answers 503
(never 500), and once the database is back it serves again without a restart and every job completes once.

The restarted PostgreSQL is one of the test's own (the session's server is shared by every test process).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from master.database import DatabaseUnavailable
from master.states import JobStatus
from master.store import JobStore
from tests.fixtures import Cluster, ffmpeg_available, make_clip, wait_for
from tests.postgres import PostgreSQL

pytestmark = pytest.mark.integration
needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg not installed")

JOBS = 4


@pytest.fixture
def private_postgres():
    """A PostgreSQL of this test alone, which it may stop and start again (same port, same data)."""
    server = PostgreSQL(Path(tempfile.mkdtemp(prefix="converter-test-pg-own-"))).start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


class Watcher:
    """Asks a master's /healthz and job list every 50 ms in a thread; remembers every status code it got."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.wait(0.05):
            for path in ("/healthz", "/api/jobs"):
                try:
                    self.seen.append((path, session.get(self.url + path, timeout=5).status_code))
                except requests.RequestException:
                    self.seen.append((path, 0))

    def stop(self) -> list[tuple[str, int]]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def health(url: str) -> requests.Response:
    return requests.get(f"{url}/healthz", timeout=5)


def jobs_of(master: Cluster) -> list[dict]:
    return requests.get(f"{master.url}/api/jobs", timeout=10).json()["jobs"]


def metric(url: str, name: str) -> float:
    line = next(line for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines()
                if line.startswith(name + " "))
    return float(line.split()[1])


def answers(store: JobStore) -> bool:
    try:
        store.counts_by_status()
        return True
    except DatabaseUnavailable:
        return False


def test_while_postgresql_is_down_the_store_refuses_at_once_and_the_same_store_works_once_it_is_back(
        private_postgres):
    store = JobStore(private_postgres.new_database())
    try:
        store.create_job(job_id="a", source_path="in/a.mp4", output_path="out/a.mp4", profile="h264-720p",
                         source_size=10, source_sha256="00" * 32, source_mtime_ns=1, max_attempts=3)
        private_postgres.stop("fast")
        with pytest.raises(DatabaseUnavailable):
            store.get_job("a")  # its connection broke
        assert not store.available
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(DatabaseUnavailable):
                store.claim_next("w", 60)
        assert time.monotonic() - started < 2.0  # no connect attempt, no pool wait per call

        private_postgres.start()
        wait_for(lambda: answers(store), 30, 0.1, "the store to reach PostgreSQL again")
        assert store.available and store.reconnects == 1
        assert store.get_job("a").status is JobStatus.PENDING
        assert store.claim_next("w", 60).id == "a"
    finally:
        store.close()


@needs_ffmpeg
def test_a_postgresql_restart_mid_run_loses_no_job_and_needs_no_master_restart(private_postgres, tmp_path):
    master = Cluster(tmp_path, database={"url": private_postgres.new_database()}, lease_seconds=5)
    try:
        clip = make_clip(tmp_path / "clip.mp4", seconds=1.0, size="640x360")
        for i in range(JOBS):
            master.put_source(f"in/{i}.mp4", clip)
            master.submit(f"in/{i}.mp4", f"out/{i}.mp4", f"pg{i}")
        master.add_worker("w1")
        watcher = Watcher(master.url)
        wait_for(lambda: master.job("pg0")["status"] == "completed", 120, 0.1, "a first job to complete")
        running = wait_for(lambda: next((job for job in jobs_of(master) if job["status"] == "processing"), None),
                           60, 0.05, "a job to be running")

        private_postgres.stop("fast")
        down = wait_for(lambda: (lambda r: [r] if r.status_code == 503 else None)(health(master.url)), 30, 0.05,
                        "/healthz to report not ready")[0]
        assert down.json()["error"] == "database_unavailable" and down.headers["Retry-After"]
        claim = requests.post(f"{master.url}/api/worker/claim", json={"worker_id": "probe", "wait": 2}, timeout=10)
        assert claim.status_code in (204, 503)
        assert requests.get(f"{master.url}/api/jobs", timeout=10).status_code == 503
        assert metric(master.url, "converter_master_db_available") == 0  # /metrics answers meanwhile

        # Down for longer than the running job's lease: its worker could renew nothing meanwhile.
        wait_for(lambda: time.time() > running["lease_expires_at"] + 1, 30, 0.1, "the running job's lease to end")
        private_postgres.start()
        wait_for(lambda: health(master.url).status_code == 200, 30, 0.05, "/healthz to report ready again")

        def all_done():
            jobs = jobs_of(master)
            return jobs if len(jobs) == JOBS and all(job["status"] == "completed" for job in jobs) else None

        jobs = wait_for(all_done, 180, 0.2, "every job to complete after the restart")
        seen = watcher.stop()
        assert [code for _, code in seen if code >= 500 and code != 503] == []
        served = (tmp_path / "master.log").read_text()
        assert re.findall(r"tornado\.access: 5(?!03)\d\d .*", served) == []  # nor to the worker
        assert any(code == 503 for path, code in seen if path == "/healthz")
        assert [job["attempts"] for job in jobs] == [1] * JOBS  # the lease was extended, not lost, after the outage
        for job in jobs:
            output = master.stored(job["output_path"])
            assert output is not None and len(output) == job["output_size"]
        assert metric(master.url, "converter_master_jobs_completed_total") == JOBS  # none completed twice
        assert metric(master.url, "converter_master_db_reconnects_total") >= 1
        wait_for(lambda: metric(master.url, "converter_master_job_notices_reconnects_total") >= 1, 30, 0.1,
                 "the NOTIFY listener to listen again")
    finally:
        master.stop()


def test_a_file_dropped_in_the_watch_folder_while_postgresql_is_down_becomes_a_job_once_it_is_back(
        private_postgres, tmp_path):
    master = Cluster(tmp_path, database={"url": private_postgres.new_database()},
                     watch={"inbox": "inbox", "stable_seconds": 0.3, "interval": 0.1})
    try:
        private_postgres.stop("fast")
        wait_for(lambda: health(master.url).status_code == 503, 30, 0.05, "/healthz to report not ready")
        dropped = master.root / "inbox" / "late.mp4"
        dropped.write_bytes(b"\0" * 1000)
        wait_for(lambda: not dropped.exists(), 30, 0.05, "the watcher to take the file")  # its job not yet made

        private_postgres.start()
        jobs = wait_for(lambda: health(master.url).ok and jobs_of(master), 30, 0.1, "the file to become a job")
        assert [job["source_path"] for job in jobs] == ["watched/late.mp4"]
    finally:
        master.stop()
