"""The real worker process against the real master process, with real FFmpeg."""

import signal

import pytest

from tests.fixtures import ffprobe, make_clip, process_alive, stub_ffmpeg, wait_for

pytestmark = pytest.mark.integration


def test_worker_converts_a_1080p_clip_to_720p(cluster):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=2.0)
    worker = cluster.add_worker()
    cluster.submit("in/clip.mp4", "out/clip-720p.mp4", "e2e")
    job = cluster.wait_status("e2e", "completed", "failed")
    assert job["status"] == "completed", job
    info = ffprobe(cluster.root / "out" / "clip-720p.mp4")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert (video["codec_name"], video["width"], video["height"], audio["codec_name"]) == ("h264", 1280, 720, "aac")
    assert abs(float(info["format"]["duration"]) - 2.0) <= 0.1
    assert job["output_size"] == (cluster.root / "out" / "clip-720p.mp4").stat().st_size
    assert job["accel"] == "cpu" and job["conversion_seconds"] > 0 and job["speed"] > 0
    wait_for(lambda: not any((cluster.tmp / "cache-w1").iterdir()), 5, what="cache dir removal")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_sigterm_gives_the_running_job_back_and_exits_0(cluster):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="320x240")
    worker = cluster.add_worker(ffmpeg_binary=stub_ffmpeg(cluster.tmp))
    cluster.submit("in/clip.mp4", "out/clip.mp4", "term")
    wait_for(lambda: (cluster.tmp / "stub.pid").exists(), 20, what="ffmpeg stub to start")
    stub_pid = int((cluster.tmp / "stub.pid").read_text())
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    job = cluster.job("term")
    assert (job["status"], job["attempts"], job["worker_id"]) == ("pending", 0, None)
    assert not process_alive(stub_pid)
    assert not (cluster.tmp / "cache-w1" / "job_term").exists()


def test_ffmpeg_dies_with_a_sigkilled_worker_and_the_lease_returns_the_job(cluster):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="320x240")
    worker = cluster.add_worker(ffmpeg_binary=stub_ffmpeg(cluster.tmp))
    cluster.submit("in/clip.mp4", "out/clip.mp4", "kill")
    wait_for(lambda: (cluster.tmp / "stub.pid").exists(), 20, what="ffmpeg stub to start")
    stub_pid = int((cluster.tmp / "stub.pid").read_text())
    worker.signal(signal.SIGKILL)
    worker.wait(10)
    wait_for(lambda: not process_alive(stub_pid), 5, what="ffmpeg child to die with its worker")
    job = cluster.wait_status("kill", "pending", timeout=15)  # the 5 s lease expires, the reaper requeues
    assert job["error"] == "lease expired" and job["attempts"] == 1
    cluster.add_worker("w2")
    assert cluster.wait_status("kill", "completed", "failed")["status"] == "completed"


def test_two_workers_never_convert_the_same_job(cluster):
    make_clip(cluster.root / "in" / "tiny.mp4", seconds=0.5, size="160x120")
    for i in range(12):
        cluster.submit("in/tiny.mp4", f"out/{i}.mp4", f"r{i}")
    cluster.add_worker("wa")
    cluster.add_worker("wb")
    for i in range(12):
        assert cluster.wait_status(f"r{i}", "completed", "failed", timeout=120)["status"] == "completed"
    jobs = [cluster.job(f"r{i}") for i in range(12)]
    assert all(j["attempts"] == 1 for j in jobs)
    logs = (cluster.tmp / "wa.log").read_text() + (cluster.tmp / "wb.log").read_text()
    for i in range(12):
        assert logs.count(f"job r{i}: completed") == 1
