"""Nothing lost with the bucket backend: faults between worker and object store, and in the store itself.

The master's ``storage.s3.endpoint`` points at a fault proxy in front of SeaweedFS, so every presigned URL
it hands out goes through the proxy too (the signature covers the host the proxy listens on, and the
proxy passes bytes unchanged unless told to cut or flip). Each case checks how the job ends, that the
output in the bucket is byte-exact against its SHA-256, and that no multipart upload is left open.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
import requests

from tests.faults.proxy import Fault, FaultProxy
from tests.faults.test_faults import PATIENT_RETRY, assert_nothing_left, assert_verified_output
from tests.fixtures import Cluster, make_clip, wait_for
from tests.seaweedfs import SeaweedFS
from worker.client import MasterClient
from worker.errors import RetryableError
from worker.retry import RetryPolicy

pytestmark = pytest.mark.integration


def bucket_cluster(tmp_path, server: SeaweedFS, **s3) -> tuple[Cluster, FaultProxy]:
    proxy = FaultProxy(server.port)
    cluster = Cluster(tmp_path, bucket=server, s3={"endpoint": proxy.url, "part_size": "5MiB", **s3},
                      lease_seconds=3)
    return cluster, proxy


def source(cluster: Cluster, name: str = "src.mp4") -> str:
    """A 4 s 720p clip in the bucket, with its SHA-256 in its metadata: the master need not read it, so the
    faults land in the worker's traffic."""
    clip = make_clip(cluster.tmp / "clips" / name, seconds=4.0, size="1280x720")
    cluster.put_source(f"in/{name}", clip, with_digest=True)
    return f"in/{name}"


@pytest.fixture
def faulty(tmp_path, seaweedfs):
    cluster, proxy = bucket_cluster(tmp_path, seaweedfs)
    yield cluster, proxy
    cluster.stop()
    proxy.close()


@pytest.mark.parametrize("action", ["cut", "flip"])
def test_store_traffic_cut_or_corrupted_both_ways_is_resent_and_the_job_completes(faulty, action):
    cluster, proxy = faulty
    src = source(cluster)
    proxy.add(Fault("down", after_bytes=400_000, action=action))  # inside the source's GET
    proxy.add(Fault("up", after_bytes=150_000, action=action))  # inside the output's part PUT
    worker = cluster.add_worker("w1", retry=PATIENT_RETRY)
    cluster.submit(src, "out/a.mp4", "s1")
    job = cluster.wait_status("s1", "completed", "failed", timeout=120)
    assert_verified_output(cluster, job)
    assert proxy.injected == 2 and job["attempts"] == 1
    if action == "flip":
        log = worker.output()
        assert "SHA-256 mismatch" in log and "BadDigest" in log  # we caught the one, the store the other
    assert_nothing_left(cluster)


@pytest.mark.parametrize("phase", ["download", "upload"])
def test_sigkill_worker_mid_transfer_then_a_second_worker_finishes(faulty, phase):
    cluster, proxy = faulty
    src = source(cluster)
    proxy.rate["down" if phase == "download" else "up"] = 150_000
    first = cluster.add_worker("w1")
    cluster.submit(src, "out/a.mp4", "s2")
    if phase == "download":
        wait_for(lambda: proxy.traffic["down"] > 200_000, 60, what="the download to be under way")
    else:
        wait_for(lambda: cluster.bucket.open_uploads() and proxy.traffic["up"] > 100_000, 90,
                 what="the upload to be under way")
    first.signal(signal.SIGKILL)
    first.wait(10)
    proxy.drop_connections()
    proxy.rate = {"up": 0.0, "down": 0.0}
    cluster.add_worker("w2")
    job = cluster.wait_status("s2", "completed", "failed", timeout=90)
    assert_verified_output(cluster, job)
    assert job["worker_id"] == "w2" and job["attempts"] == 2
    # the first attempt's upload was aborted by the master (w1's cache dir goes when w1 starts again)
    wait_for(lambda: cluster.bucket.open_uploads() == [], 20, 0.2, "the first attempt's upload to be aborted")


def test_store_killed_mid_upload_then_restarted_the_job_completes(tmp_path):
    server = SeaweedFS(tmp_path / "weed").start()
    cluster, proxy = bucket_cluster(tmp_path, server)
    try:
        src = source(cluster)
        proxy.rate["up"] = 100_000
        worker = cluster.add_worker("w1", retry={**PATIENT_RETRY, "upload_window": 60})
        cluster.submit(src, "out/a.mp4", "s3")
        wait_for(lambda: cluster.bucket.open_uploads() and proxy.traffic["up"] > 60_000, 90,
                 what="the upload to be under way")
        server.kill()
        proxy.drop_connections()
        wait_for(lambda: "object store" in worker.output() or "object_store_unavailable" in worker.output(), 30,
                 what="the worker to meet the store's absence")
        proxy.rate["up"] = 0
        server.start()
        job = cluster.wait_status("s3", "completed", "failed", timeout=120)
        assert_verified_output(cluster, job)
        assert job["attempts"] == 1
        assert_nothing_left(cluster)
    finally:
        cluster.stop()
        proxy.close()
        server.stop()


def test_master_killed_after_joining_the_output_before_recording_it_the_retry_completes_the_job(faulty):
    """The master asks the store to join the output's parts and is killed before it can record the job
    completed (the store's answer held back, then SIGKILL): the object is there, the job still processing.
    The worker's retry reaches the restarted master, which finds the object this attempt wrote (its SHA-256
    and writer in the object's metadata) and completes the job with it: no "output exists", no second run."""
    cluster, proxy = faulty
    src = source(cluster)
    answer = threading.Event()
    proxy.when_sent(rb"^POST [^ ]*\?uploadId=", hold_reply=answer)
    try:
        cluster.add_worker("w1", retry=PATIENT_RETRY)
        cluster.submit(src, "out/a.mp4", "k1")
        wait_for(lambda: cluster.stored("out/a.mp4") is not None, 120, 0.2,
                 "the store to join the output while its answer is held back")
        assert cluster.job("k1")["status"] == "processing"  # the master recorded nothing
        cluster.restart_master(signal.SIGKILL)
    finally:
        answer.set()
    job = cluster.wait_status("k1", "completed", "failed", timeout=120)
    assert_verified_output(cluster, job)
    assert job["attempts"] == 1 and job["worker_id"] == "w1"
    assert_nothing_left(cluster)


def test_a_second_complete_of_one_attempt_never_removes_the_output_the_job_was_completed_with(faulty):
    """Two ``output-complete`` calls of one attempt (a retry while the first is still on its way, perhaps to
    another master): the first call's join is done in the store but the store's answer is held back; meanwhile
    the second call finds the object and completes the job with it. The first call then finds the job completed
    and gives up, and must leave the object, now the job's output, where it is."""
    cluster, proxy = faulty
    src = source(cluster)
    answered = threading.Event()
    second: dict[str, requests.Response] = {}

    def complete_again() -> None:
        try:
            wait_for(lambda: cluster.stored("out/a.mp4") is not None, 60, 0.1, "the first call's join")
            declared = {"size": len(cluster.stored("out/a.mp4")),
                        "sha256": cluster.bucket.metadata("out/a.mp4")["sha256"]}
            second["answer"] = requests.post(f"{cluster.url}/api/worker/output-complete", params={"job_id": "c1"},
                                             json=declared, headers={"X-Worker-Id": "w1"}, timeout=30)
        finally:
            answered.set()

    proxy.when_sent(rb"^POST [^ ]*\?uploadId=", hold_reply=answered,
                    action=lambda: threading.Thread(target=complete_again, daemon=True).start())
    worker = cluster.add_worker("w1", retry=PATIENT_RETRY)
    cluster.submit(src, "out/a.mp4", "c1")
    wait_for(answered.is_set, 120, 0.1, "the second output-complete to be answered")
    assert second["answer"].status_code == 200, second["answer"].text
    wait_for(lambda: "no longer ours" in worker.output(), 30, 0.1, "the first call to find the job completed")
    job = cluster.job("c1")
    assert_verified_output(cluster, job)  # the object is still there, byte-exact
    assert job["attempts"] == 1
    assert_nothing_left(cluster)


def test_a_store_that_denies_writes_fails_the_job_clearly_and_loses_nothing(tmp_path, seaweedfs):
    cluster = Cluster(tmp_path, bucket=seaweedfs, s3={"reader": True}, max_attempts=1, lease_seconds=3)
    try:
        clip = make_clip(tmp_path / "src.mp4", seconds=1.0, size="320x240")
        cluster.put_source("in/src.mp4", clip)  # put there by someone allowed to (the test), read by the master
        cluster.submit("in/src.mp4", "out/a.mp4", "d1")
        cluster.add_worker("w1", retry={"attempts": 2, "base_delay": 0.05, "factor": 2, "cap": 0.2,
                                        "upload_window": 1})
        job = cluster.wait_status("d1", "failed", "completed", timeout=90)
        assert job["status"] == "failed"
        assert "object_store_refused" in job["error"] or "AccessDenied" in job["error"], job["error"]
        assert cluster.stored("in/src.mp4") == clip.read_bytes() and cluster.stored("out/a.mp4") is None
        retried = requests.post(f"{cluster.url}/api/jobs/d1/retry", timeout=10)
        assert retried.status_code == 200 and retried.json()["status"] == "pending"  # not lost: it can run again
    finally:
        cluster.stop()


def test_expired_part_urls_are_asked_for_again_until_every_part_is_stored(tmp_path, seaweedfs):
    """A slow link: every part URL but the first of each answer has expired by the time it is used."""
    cluster = Cluster(tmp_path, bucket=seaweedfs, s3={"presign_expiry": 1, "part_size": "5MiB"}, lease_seconds=120)
    try:
        cluster.bucket.put("in/src.mp4", b"source")
        cluster.submit("in/src.mp4", "out/big.mp4", "x1")
        client = MasterClient(cluster.url, "slow", retry=RetryPolicy(attempts=8, base_delay=0.05, factor=1, cap=0.05),
                              upload_limit=6_000_000)
        job = client.claim(5)
        output = tmp_path / "output.mp4"
        output.write_bytes(os.urandom(16 << 20))  # four parts of 5, 5, 5 and 1 MiB; about a second each
        assert client.upload_to_bucket(job["id"], output, job["bucket"]["part_size"]) == 16 << 20
        assert cluster.job("x1")["status"] == "completed"
        assert cluster.stored("out/big.mp4") == output.read_bytes()
        assert client.metrics.transfer_retries.labels("upload")._value.get() >= 1  # some URL did expire
        assert cluster.bucket.open_uploads() == []
    finally:
        cluster.stop()


def test_a_worker_gives_up_on_a_source_the_store_does_not_have_with_a_clear_error(tmp_path, seaweedfs):
    cluster = Cluster(tmp_path, bucket=seaweedfs)
    try:
        cluster.bucket.put("in/gone.mp4", b"soon gone")
        cluster.submit("in/gone.mp4", "out/gone.mp4", "g1")
        cluster.bucket.client.delete_object(Bucket=seaweedfs.bucket, Key=cluster.bucket.key("in/gone.mp4"))
        client = MasterClient(cluster.url, "w", retry=RetryPolicy(attempts=2, base_delay=0.01, factor=1, cap=0.01))
        client.claim(5)
        with pytest.raises(RetryableError) as failed:
            client.download_from_bucket("g1", tmp_path / "source.mp4")
        assert "object store answered 404" in str(failed.value) and "NoSuchKey" in str(failed.value)
        assert not (tmp_path / "source.mp4").exists()
    finally:
        cluster.stop()
