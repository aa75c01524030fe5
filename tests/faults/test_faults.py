"""Nothing lost: each case injects a fault into real processes and checks how the job ends.

Every case asserts the job's end state (completed with a byte-exact, digest-verified output, or
failed with a clear reason), that no partial file appears at an output path, and that no temp or
cache file is left behind.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.proxy import Fault, FaultProxy
from tests.fixtures import Cluster, ffprobe, make_clip, process_alive, stub_ffmpeg, wait_for

pytestmark = pytest.mark.integration

PATIENT_RETRY = {"attempts": 8, "base_delay": 0.3, "factor": 2, "cap": 2}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_verified_output(cluster: Cluster, job: dict) -> None:
    assert job["status"] == "completed", job
    output = cluster.tmp / f"verify-{job['id']}.mp4"
    output.write_bytes(cluster.stored(job["output_path"]))
    assert sha256(output) == job["output_sha256"]
    video = next(s for s in ffprobe(output)["streams"] if s["codec_type"] == "video")
    assert video["codec_name"] == "h264" and video["height"] <= 720  # h264-720p never upscales


def assert_nothing_left(cluster: Cluster) -> None:
    temp = [p for p in cluster.root.rglob(".converter-*")]
    assert not temp, temp
    if cluster.bucket is not None:
        wait_for(lambda: cluster.bucket.open_uploads() == [], 20, 0.2, "no multipart upload left open")
    # a worker removes a job's directory just after it reports the job's end, which is what the test saw
    def job_dirs() -> list[Path]:
        return list(cluster.tmp.glob("cache-*/job_*"))

    try:
        wait_for(lambda: not job_dirs(), 10, 0.05, "the workers to remove their job directories")
    except AssertionError:
        raise AssertionError(f"left behind: {job_dirs()}") from None


def claims_answered_without_a_job(cluster: Cluster) -> float:
    """POST /api/worker/claim answered 204, from the master's request-duration histogram."""
    text = requests.get(f"{cluster.url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "converter_master_http_request_duration_seconds_count"
               and s.labels.get("handler") == "ClaimHandler" and s.labels.get("code") == "204")


def proxied(cluster: Cluster) -> FaultProxy:
    return FaultProxy(cluster.port)


def source(cluster: Cluster, name: str = "src.mp4", seconds: float = 4.0, size: str = "1280x720") -> str:
    clip = make_clip(cluster.tmp / "clips" / name, seconds=seconds, size=size)
    cluster.put_source(f"in/{name}", clip)
    return f"in/{name}"


# 1 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["download", "ffmpeg", "upload"])
def test_sigkill_worker_then_a_second_worker_finishes(cluster, phase):
    src = source(cluster)
    proxy = proxied(cluster)
    ffmpeg_binary = "ffmpeg"
    if phase == "download":
        proxy.rate["down"] = 400_000
    elif phase == "upload":
        proxy.rate["up"] = 100_000
    else:
        ffmpeg_binary = stub_ffmpeg(cluster.tmp)
    first = cluster.add_worker("w1", ffmpeg_binary, master_url=proxy.url)
    cluster.submit(src, "out/a.mp4", "k1")
    if phase == "download":
        wait_for(lambda: _size(cluster.tmp / "cache-w1" / "job_k1" / "source.mp4") > 0, 30, what="download")
    elif phase == "upload":
        wait_for(lambda: any(p.stat().st_size > 0 for p in cluster.root.rglob(".converter-tus-*")), 60,
                 what="upload to start")
    else:
        wait_for(lambda: (cluster.tmp / "stub.pid").exists(), 30, what="ffmpeg to start")
    first.signal(signal.SIGKILL)
    first.wait(10)
    proxy.drop_connections()  # what was still in flight dies with the worker's host
    if phase == "ffmpeg":
        stub_pid = int((cluster.tmp / "stub.pid").read_text())
        wait_for(lambda: not process_alive(stub_pid), 5, what="ffmpeg to die with its worker")
    cluster.add_worker("w2")
    job = cluster.wait_status("k1", "completed", "failed", timeout=90)
    assert_verified_output(cluster, job)
    assert job["worker_id"] == "w2" and job["attempts"] == 2
    restarted = cluster.add_worker("w1")  # the killed worker's cache dir is cleaned when it starts again
    wait_for(lambda: not list((cluster.tmp / "cache-w1").glob("job_*")), 20, what="stale cache cleanup")
    restarted.stop()
    assert_nothing_left(cluster)
    proxy.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# 2 ------------------------------------------------------------------------------------------------

def test_sigkill_master_during_upload_then_upload_resumes(cluster):
    src = source(cluster)
    proxy = proxied(cluster)
    proxy.rate["up"] = 150_000
    worker = cluster.add_worker("w1", master_url=proxy.url, retry=PATIENT_RETRY)
    cluster.submit(src, "out/a.mp4", "m1")
    wait_for(lambda: any(p.stat().st_size > 100_000 for p in cluster.root.rglob(".converter-tus-*")), 60,
             what="upload under way")
    cluster.restart_master(signal.SIGKILL)
    proxy.rate["up"] = 0
    job = cluster.wait_status("m1", "completed", "failed", timeout=90)
    assert_verified_output(cluster, job)
    assert job["attempts"] == 1  # the same attempt resumed its upload
    assert "upload of job m1 failed" in worker.output()
    assert_nothing_left(cluster)
    proxy.close()


# 3 and 4 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["cut", "flip"])
def test_proxy_faults_in_both_directions(cluster, action):
    src = source(cluster)
    proxy = proxied(cluster)
    proxy.add(Fault("down", after_bytes=500_000, action=action))
    proxy.add(Fault("up", after_bytes=200_000, action=action))
    worker = cluster.add_worker("w1", master_url=proxy.url, retry=PATIENT_RETRY)
    cluster.submit(src, "out/a.mp4", "p1")
    job = cluster.wait_status("p1", "completed", "failed", timeout=90)
    assert_verified_output(cluster, job)
    assert proxy.injected == 2 and job["attempts"] == 1
    log = worker.output()
    if action == "flip":
        assert "SHA-256 mismatch" in log and "computed another SHA-256" in log
    else:
        assert "cut at byte" in log
    assert_nothing_left(cluster)
    proxy.close()


# 5 ------------------------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_master_disk_fails_clearly_and_retry_completes(tmp_path, tmpfs):
    root = tmpfs("storage", "4m")
    cluster = Cluster(tmp_path, storage_root=root, lease_seconds=3, max_attempts=1)
    try:
        src = source(cluster, seconds=2.0, size="640x360")
        filler = root / "filler"
        free = shutil.disk_usage(root).free
        filler.write_bytes(b"\0" * (free - 20_000))
        cluster.add_worker("w1")
        cluster.submit(src, "out/a.mp4", "d1")
        job = cluster.wait_status("d1", "failed", "completed", timeout=60)
        assert job["status"] == "failed" and "insufficient_storage" in job["error"]
        assert not (root / "out" / "a.mp4").exists()
        filler.unlink()
        requests.post(f"{cluster.url}/api/jobs/d1/retry", timeout=10).raise_for_status()
        assert_verified_output(cluster, cluster.wait_status("d1", "completed", "failed", timeout=60))
        assert_nothing_left(cluster)
    finally:
        cluster.stop()


def test_worker_without_cache_room_leaves_the_job_to_one_with_room(cluster, tmpfs):
    small_cache = tmpfs("small-cache", "1m")
    src = source(cluster)  # a few MB: more than the small cache holds
    cluster.add_worker("small", cache_path=small_cache)
    cluster.submit(src, "out/a.mp4", "c1")
    wait_for(lambda: "small" in {w["id"] for w in requests.get(f"{cluster.url}/api/workers", timeout=5).json()
                                 ["workers"]}, 20, what="small worker to register")
    # A long poll answered "no job" after the job was pending: the small worker asked and was passed over.
    refused = claims_answered_without_a_job(cluster)
    wait_for(lambda: claims_answered_without_a_job(cluster) > refused, 20, 0.2,
             what="a claim by the small worker to be answered without the job")
    assert cluster.job("c1")["status"] == "pending"
    cluster.add_worker("big")
    job = cluster.wait_status("c1", "completed", "failed", timeout=60)
    assert_verified_output(cluster, job)
    assert job["worker_id"] == "big"


# 6 ------------------------------------------------------------------------------------------------

def test_corrupt_source_fails_after_one_attempt_with_ffmpegs_reason(cluster):
    (cluster.root / "in").mkdir(parents=True)
    (cluster.root / "in" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 200)
    cluster.add_worker("w1")
    cluster.submit("in/corrupt.mp4", "out/corrupt.mp4", "bad")
    job = cluster.wait_status("bad", "failed", "completed", timeout=60)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "ffprobe cannot read" in job["error"] or "ffmpeg" in job["error"]
    assert not (cluster.root / "out" / "corrupt.mp4").exists()
    assert_nothing_left(cluster)


def test_hanging_ffmpeg_is_killed_retried_then_failed_while_other_jobs_go_on(tmp_path):
    cluster = Cluster(tmp_path, lease_seconds=3, max_attempts=2)
    try:
        cluster.add_worker("w1", stub_ffmpeg(tmp_path, hang_when="job_hang"), ffmpeg_timeout=2)
        src = source(cluster, seconds=1.0, size="320x240")
        cluster.submit(src, "out/hang.mp4", "hang")
        cluster.submit(src, "out/fine.mp4", "fine")
        assert_verified_output(cluster, cluster.wait_status("fine", "completed", "failed", timeout=60))
        job = cluster.wait_status("hang", "failed", "completed", timeout=60)
        assert job["attempts"] == 2 and "exceeded its 2 s limit" in job["error"]
        stub_pid = int((tmp_path / "stub.pid").read_text())
        assert not process_alive(stub_pid)
        assert_nothing_left(cluster)
    finally:
        cluster.stop()


# 7 ------------------------------------------------------------------------------------------------

def test_two_workers_racing_for_200_jobs_do_each_exactly_once(cluster):
    make_clip(cluster.root / "in" / "tiny.mp4", seconds=0.2, size="64x64", audio=False)
    for i in range(200):
        cluster.submit("in/tiny.mp4", f"out/{i}.mp4", f"r{i:03d}")
    cluster.add_worker("wa", concurrency=2)
    cluster.add_worker("wb", concurrency=2)
    wait_for(lambda: requests.get(f"{cluster.url}/api/jobs?status=completed&limit=1", timeout=10).json()["total"]
             == 200, 240, interval=1, what="200 jobs to complete")
    jobs = requests.get(f"{cluster.url}/api/jobs?limit=1000", timeout=10).json()["jobs"]
    assert len(jobs) == 200 and all(j["status"] == "completed" and j["attempts"] == 1 for j in jobs)
    log = (cluster.tmp / "wa.log").read_text() + (cluster.tmp / "wb.log").read_text()
    assert sum(log.count(f"job r{i:03d}: completed") for i in range(200)) == 200
    assert {j["worker_id"] for j in jobs} == {"wa", "wb"}


# 8 ------------------------------------------------------------------------------------------------

def test_late_upload_from_an_expired_lease_is_refused_and_the_new_result_kept(cluster):
    src = source(cluster)
    proxy = proxied(cluster)
    proxy.rate["up"] = 100_000
    late = cluster.add_worker("late", master_url=proxy.url)
    cluster.submit(src, "out/a.mp4", "l1")
    wait_for(lambda: any(p.stat().st_size > 50_000 for p in cluster.root.rglob(".converter-tus-*")), 60,
             what="the first upload to start")
    late.signal(signal.SIGSTOP)  # frozen mid-upload: no heartbeats, the lease runs out
    proxy.rate["up"] = 1_000  # and its bytes in flight crawl
    cluster.add_worker("current")
    job = cluster.wait_status("l1", "completed", timeout=90)
    assert job["worker_id"] == "current"
    kept = sha256(cluster.root / "out" / "a.mp4")
    proxy.rate["up"] = 0
    late.signal(signal.SIGCONT)
    wait_for(lambda: "no longer ours" in late.output() or "aborting it" in late.output(), 30,
             what="the late worker to be refused")
    assert "master answered 409" in late.output() or "master answered 400" in late.output()
    assert sha256(cluster.root / "out" / "a.mp4") == kept == cluster.job("l1")["output_sha256"]
    late.stop()
    assert_nothing_left(cluster)
    proxy.close()
