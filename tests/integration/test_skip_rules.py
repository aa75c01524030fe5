"""A profile's skip and keep-smaller rules with a real master, real workers and FFmpeg: a source already in the
target codec ends skipped without a conversion (judged on the downloaded source), on both storage backends and
both databases; an output larger than its source is discarded, the source's bytes kept as the output."""

import hashlib
import subprocess

import pytest
import requests

from tests.fixtures import Cluster, wait_for

pytestmark = pytest.mark.integration


def metric(url: str, name: str, labels: str = "") -> float:
    lines = [line for line in requests.get(url, timeout=10).text.splitlines()
             if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(name + " "))]
    return float(lines[0].split()[1]) if lines else 0.0


@pytest.fixture(scope="module")
def matching_source(tmp_path_factory):
    """H.264 720p25, ~1.8 Mbit/s (0.08 bits per pixel per frame: within h264-720p's 0.1 x 1.2), over 3 MB, index at
    the front (faststart): noise keeps the encoder at its bitrate."""
    path = tmp_path_factory.mktemp("skip") / "already.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                    "-vf", "noise=alls=30:allf=t", "-t", "15", "-c:v", "libx264", "-preset", "ultrafast",
                    "-b:v", "1800k", "-maxrate", "1800k", "-bufsize", "1800k", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", str(path)], check=True, timeout=120)
    assert path.stat().st_size > 3_000_000
    return path


@pytest.fixture(params=["local-sqlite", "s3-sqlite", "local-postgres"])
def any_cluster(request, tmp_path):
    storage, database = request.param.split("-")
    bucket = request.getfixturevalue("seaweedfs") if storage == "s3" else None
    db = {"url": request.getfixturevalue("postgres").new_database()} if database == "postgres" else None
    running = Cluster(tmp_path, bucket=bucket, database=db)
    yield running
    running.stop()


def test_a_source_already_in_the_target_codec_is_skipped_without_a_conversion(any_cluster, matching_source):
    cluster = any_cluster
    cluster.put_source("in/already.mp4", matching_source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/already.mp4", "out/already.mp4", "skip1", profile="h264-720p")
    job = cluster.wait_status("skip1", "skipped", "completed", "failed", timeout=90)
    assert job["status"] == "skipped", (job, worker.output())
    assert "already h264 1280x720" in job["reason"] and "h264-720p's skip rule" in job["reason"]
    assert (job["kept_source"], job["output_size"], job["output_sha256"]) == (False, None, None)
    assert cluster.stored("out/already.mp4") is None
    # the worker downloaded the source once (the rule is judged on it) and converted nothing
    served = metric(f"{cluster.url}/metrics", "converter_master_bytes_served_total")
    assert served in (0, matching_source.stat().st_size)  # 0: a bucket serves it, not the master
    wait_for(lambda: metric(worker.metrics_url, "converter_worker_jobs_finished_total", '{outcome="skipped"}') == 1,
             what="the worker to count the skipped job")
    assert metric(worker.metrics_url, "converter_worker_transfer_bytes_total", '{direction="download"}') == \
        matching_source.stat().st_size
    assert metric(f"{cluster.url}/metrics", "converter_master_jobs", '{status="skipped"}') == 1
    attempts = requests.get(f"{cluster.url}/api/jobs/skip1/attempts", timeout=10).json()["attempts"]
    assert [a["outcome"] for a in attempts] == ["skipped"]
    listed = requests.get(f"{cluster.url}/api/jobs", params={"status": "skipped"}, timeout=10).json()
    assert [j["id"] for j in listed["jobs"]] == ["skip1"]


def test_an_output_larger_than_its_source_is_discarded_and_the_source_kept(cluster, tmp_path):
    # HEVC (not the target codec: no skip) 720p at CRF 51: tiny; h264-720p (720 lines: no upscale) at CRF 23 is not
    source = tmp_path / "tiny.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=10", "-t", "2",
                    "-c:v", "libx265", "-preset", "ultrafast", "-crf", "51", "-x265-params", "log-level=error",
                    "-pix_fmt", "yuv420p", str(source)], check=True, timeout=60)
    cluster.put_source("in/tiny.mkv", source)
    worker = cluster.add_worker("w1")
    cluster.submit("in/tiny.mkv", "out/tiny.mp4", "big1", profile="h264-720p")
    job = cluster.wait_status("big1", "completed", "failed", "skipped", timeout=90)
    assert job["status"] == "completed", (job, worker.output())
    assert job["kept_source"] is True and "larger than the source" in job["reason"]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert cluster.stored("out/tiny.mp4") == source.read_bytes()
    assert (job["output_sha256"], job["output_size"], job["saved_bytes"]) == (digest, source.stat().st_size, 0)
    assert cluster.stored("in/tiny.mkv") == source.read_bytes()  # the source untouched
    assert sorted(p.name for p in (cluster.root / "out").iterdir()) == ["tiny.mp4"]  # no temp file left
    assert "source kept" in worker.output()


def test_keep_source_never_overwrites_and_refuses_other_workers(cluster, tmp_path):
    source = tmp_path / "s.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=5", "-t", "1",
                    "-c:v", "mpeg4", str(source)], check=True, timeout=60)
    cluster.put_source("in/s.mkv", source)
    cluster.submit("in/s.mkv", "out/s.mp4", "k1", profile="h264-1080p")
    claimed = requests.post(f"{cluster.url}/api/worker/claim", json={"worker_id": "t1", "wait": 5}, timeout=10).json()
    assert claimed["id"] == "k1"
    keep = f"{cluster.url}/api/worker/keep-source"
    other = requests.post(keep, params={"job_id": "k1"}, json={"worker_id": "t2", "reason": "x"}, timeout=10)
    assert (other.status_code, other.json()["error"]) == (409, "not_lease_owner")
    (cluster.root / "out").mkdir(exist_ok=True)
    (cluster.root / "out/s.mp4").write_bytes(b"someone else's file")
    answer = requests.post(keep, params={"job_id": "k1"}, json={"worker_id": "t1", "reason": "larger"}, timeout=10)
    assert answer.status_code == 409 and answer.json()["error"] == "output_exists", answer.text
    assert (cluster.root / "out/s.mp4").read_bytes() == b"someone else's file"
    assert cluster.job("k1")["status"] == "failed"
    assert sorted(p.name for p in (cluster.root / "out").iterdir()) == ["s.mp4"]
