"""Bandwidth limits hold within ±5 %: the worker's download/upload buckets and the master's outbound total."""

import dataclasses
import os
import threading
import time

import pytest
import requests

from tests.fixtures import ThreadedMaster, master_config
from worker.client import MasterClient
from worker.retry import RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.serial]

RATE = 20_000_000  # bytes/s: far below what loopback does even on a loaded 2-core box
SIZE = 50_000_000  # 2.5 s at RATE


def within_5_percent(size: int, seconds: float) -> None:
    rate = size / seconds
    assert 0.95 * RATE <= rate <= 1.05 * RATE, f"{rate / 1e6:.2f} MB/s for a limit of {RATE / 1e6:.0f}"


@pytest.fixture
def leased(master):
    (master.root / "in").mkdir(parents=True)
    (master.root / "in" / "src.mkv").write_bytes(os.urandom(SIZE))
    master.submit("in/src.mkv", "out/dst.mkv", job_id="b1")
    master.claim("w1")
    return master


def client(master, **limits) -> MasterClient:
    return MasterClient(master.url, "w1", retry=RetryPolicy(1, 0, 2, 0), progress_interval=60, **limits)


@pytest.mark.timeout(30)
def test_worker_download_limit_holds(leased, tmp_path):
    start = time.monotonic()
    assert client(leased, download_limit=RATE).download_source_video("b1", tmp_path / "src.bin") == SIZE
    within_5_percent(SIZE, time.monotonic() - start)


@pytest.mark.timeout(30)
def test_worker_upload_limit_holds(leased, tmp_path):
    path = tmp_path / "out.mkv"
    path.write_bytes(os.urandom(SIZE))
    start = time.monotonic()
    assert client(leased, upload_limit=RATE).upload_resumable("b1", path) == SIZE
    within_5_percent(SIZE, time.monotonic() - start)
    assert leased.job("b1")["status"] == "completed"


@pytest.mark.timeout(30)
def test_master_outbound_limit_is_shared_by_all_downloads(tmp_path):
    config = master_config(tmp_path)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, outbound_limit=RATE))
    master = ThreadedMaster(config)
    try:
        (master.root / "in").mkdir(parents=True)
        (master.root / "in" / "src.mkv").write_bytes(os.urandom(SIZE // 2))
        for job_id in ("o1", "o2"):
            master.submit("in/src.mkv", f"out/{job_id}.mkv", job_id=job_id)
            master.claim("w1")
        got = {}

        def fetch(job_id: str) -> None:
            response = requests.get(f"{master.url}/api/worker/download-video?job_id={job_id}", timeout=20)
            got[job_id] = len(response.content)

        threads = [threading.Thread(target=fetch, args=(job_id,)) for job_id in ("o1", "o2")]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(25)
        within_5_percent(sum(got.values()), time.monotonic() - start)
        assert got == {"o1": SIZE // 2, "o2": SIZE // 2}
    finally:
        master.stop()
