"""Quarantine (circuit breaker), disk-room-aware claims, upload limits and a full master disk."""

import dataclasses

import pytest
import requests

from tests.fixtures import ThreadedMaster, master_config, start_request, wait_for

MULTIPART = {"Content-Type": "multipart/form-data; boundary=b"}


def with_server(config, **server):
    return dataclasses.replace(config, server=dataclasses.replace(config.server, **server))

pytestmark = pytest.mark.integration


def upload_temps(master):
    """The temp files of multipart uploads in flight: one exists exactly while its upload holds a slot."""
    return list(master.root.rglob(".converter-upload-*"))


def seed(master, name="a.mp4", size=1000):
    (master.root / "in").mkdir(exist_ok=True)
    (master.root / "in" / name).write_bytes(b"x" * size)
    return f"in/{name}"


def fail(master, job_id, worker):
    return requests.post(f"{master.url}/api/worker/fail?job_id={job_id}",
                         json={"worker_id": worker, "error": "gpu fell off the bus", "retryable": True}, timeout=5)


@pytest.fixture
def strict(tmp_path):
    running = ThreadedMaster(master_config(tmp_path, quarantine_after=2, quarantine_seconds=60, max_attempts=5))
    yield running
    running.stop()


def register(master, worker):
    requests.post(f"{master.url}/api/worker/register", json={"worker_id": worker}, timeout=5).raise_for_status()


def test_worker_failing_repeatedly_is_quarantined_and_others_get_the_job(strict):
    register(strict, "broken")
    register(strict, "healthy")
    strict.submit(seed(strict), "out/a.mp4", job_id="q1")
    for _ in range(2):
        assert strict.claim("broken")["id"] == "q1"
        fail(strict, "q1", "broken")
    assert strict.claim("broken") is None
    [broken] = [w for w in requests.get(f"{strict.url}/api/workers", timeout=5).json()["workers"]
                if w["id"] == "broken"]
    assert broken["quarantined"] and broken["consecutive_failures"] == 2
    assert strict.claim("healthy")["id"] == "q1"


def test_success_resets_the_failure_count(strict):
    register(strict, "w")
    strict.submit(seed(strict), "out/a.mp4", job_id="s1")
    strict.claim("w")
    fail(strict, "s1", "w")
    strict.claim("w")
    requests.post(f"{strict.url}/api/worker/upload-video?job_id=s1", files={"video": b"ok"}, timeout=5)
    [worker] = requests.get(f"{strict.url}/api/workers", timeout=5).json()["workers"]
    assert worker["consecutive_failures"] == 0 and not worker["quarantined"]


def test_claim_skips_jobs_whose_source_does_not_fit_the_cache(master):
    master.submit(seed(master, "big.mp4", 10_000), "out/big.mp4", job_id="big")
    master.submit(seed(master, "small.mp4", 100), "out/small.mp4", job_id="small")
    claim = requests.post(f"{master.url}/api/worker/claim",
                          json={"worker_id": "w", "wait": 0, "cache_free_bytes": 5_000}, timeout=5)
    assert claim.json()["id"] == "small"
    assert master.job("big")["status"] == "pending"


def test_upload_larger_than_free_storage_is_507(tmp_path):
    running = ThreadedMaster(with_server(master_config(tmp_path), max_upload_size=1 << 62))
    try:
        running.submit(seed(running), "out/a.mp4", job_id="f1")
        running.claim("w")
        with start_request(running.url, "POST", "/api/worker/upload-video?job_id=f1",
                           {**MULTIPART, "Content-Length": str(1 << 62)}) as sock:
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 507") and "insufficient_storage" in answer
        assert running.job("f1")["status"] == "processing"
        assert not [p for p in running.root.rglob(".converter-upload-*")]
    finally:
        running.stop()


def test_upload_over_the_size_limit_is_413(master):
    master.submit(seed(master), "out/a.mp4", job_id="l1")
    master.claim("w")
    with start_request(master.url, "POST", "/api/worker/upload-video?job_id=l1",
                       {**MULTIPART, "Content-Length": "999999999999999"}) as sock:
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413") and "body_too_large" in answer


def test_concurrent_upload_limit_answers_503(tmp_path):
    running = ThreadedMaster(with_server(master_config(tmp_path), max_concurrent_uploads=1))
    try:
        for i in (1, 2):
            running.submit(seed(running, f"{i}.mp4"), f"out/{i}.mp4", job_id=f"c{i}")
            running.claim("w")
        slow = start_request(running.url, "POST", "/api/worker/upload-video?job_id=c1",
                             {**MULTIPART, "Content-Length": "100000"}, b"--b\r\n")
        wait_for(lambda: upload_temps(running), 10, what="the slow upload to hold the slot")  # taken before the file
        second = requests.post(f"{running.url}/api/worker/upload-video?job_id=c2", files={"video": b"x"}, timeout=5)
        assert second.status_code == 503 and second.headers["Retry-After"] == "5"
        slow.close()  # the cut upload frees its slot and leaves no temp file
        wait_for(lambda: not upload_temps(running), 10, what="the cut upload to be cleaned up")  # slot freed first
        third = requests.post(f"{running.url}/api/worker/upload-video?job_id=c2", files={"video": b"x"}, timeout=5)
        assert third.status_code == 200
        assert not [p for p in running.root.rglob(".converter-upload-*")]
        assert running.job("c1")["status"] == "processing"
    finally:
        running.stop()


def test_users_multipart_source_uploads_share_the_upload_limit(tmp_path):
    running = ThreadedMaster(with_server(master_config(tmp_path), max_concurrent_uploads=1))
    try:
        slow = start_request(running.url, "POST", "/api/jobs", {**MULTIPART, "Content-Length": "100000"}, b"--b\r\n")
        wait_for(lambda: upload_temps(running), 10, what="the slow upload to hold the slot")  # taken before the file
        form = {"profile": (None, "h264-720p")}
        second = requests.post(f"{running.url}/api/jobs", files={**form, "video": ("a.mp4", b"x")}, timeout=5)
        assert second.status_code == 503 and second.json()["error"] == "too_many_uploads"
        slow.close()  # the cut upload frees its slot and leaves no temp file
        wait_for(lambda: not upload_temps(running), 10, what="the cut upload to be cleaned up")  # slot freed first
        third = requests.post(f"{running.url}/api/jobs", files={**form, "video": ("a.mp4", b"x")}, timeout=5)
        assert third.status_code == 201, third.text
        assert not [p for p in running.root.rglob(".converter-upload-*")]
    finally:
        running.stop()
