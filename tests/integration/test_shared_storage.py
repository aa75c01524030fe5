"""Shared-storage mode: the worker reads and writes on the mount, the master verifies and commits."""

import hashlib

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import ffprobe, make_clip

pytestmark = pytest.mark.integration


def shared(cluster):
    return {"mode": "shared", "mount_path": str(cluster.root)}  # the master's storage root, "mounted" here


def transfer_bytes(worker):
    text = requests.get(worker.metrics_url, timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "converter_worker_transfer_bytes_total")


def test_shared_worker_converts_without_transferring(cluster):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="640x360")
    worker = cluster.add_worker("nfs", storage=shared(cluster))
    cluster.submit("in/clip.mp4", "out/clip.mp4", "s1")
    job = cluster.wait_status("s1", "completed", "failed", timeout=60)
    assert job["status"] == "completed", job
    output = cluster.root / "out" / "clip.mp4"
    assert hashlib.sha256(output.read_bytes()).hexdigest() == job["output_sha256"]
    assert ffprobe(output)["streams"][0]["codec_name"] == "h264"
    assert transfer_bytes(worker) == 0
    assert not list(cluster.root.rglob(".converter-*"))


def test_a_mixed_fleet_shares_one_queue(cluster):
    make_clip(cluster.root / "in" / "tiny.mp4", seconds=0.3, size="160x120")
    for i in range(8):
        cluster.submit("in/tiny.mp4", f"out/{i}.mp4", f"m{i}")
    cluster.add_worker("nfs", storage=shared(cluster))
    cluster.add_worker("http")
    jobs = [cluster.wait_status(f"m{i}", "completed", "failed", timeout=90) for i in range(8)]
    assert all(j["status"] == "completed" and j["attempts"] == 1 for j in jobs)
    assert {j["worker_id"] for j in jobs} == {"nfs", "http"}


def test_completion_with_a_wrong_digest_is_refused(cluster):
    (cluster.root / "in").mkdir(parents=True)
    (cluster.root / "in" / "a.mp4").write_bytes(b"source")
    cluster.submit("in/a.mp4", "out/a.mp4", "x1")
    claim = requests.post(f"{cluster.url}/api/worker/claim", json={"worker_id": "w", "wait": 0}, timeout=5)
    assert claim.json()["id"] == "x1"
    (cluster.root / "out").mkdir()
    (cluster.root / "out" / ".converter-shared-x1.mp4").write_bytes(b"converted")
    answer = requests.post(f"{cluster.url}/api/worker/complete?job_id=x1",
                           json={"worker_id": "w", "size": 9, "sha256": "0" * 64}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "digest_mismatch"
    assert not (cluster.root / "out" / "a.mp4").exists()
    assert not (cluster.root / "out" / ".converter-shared-x1.mp4").exists()
    assert cluster.job("x1")["status"] == "processing"
