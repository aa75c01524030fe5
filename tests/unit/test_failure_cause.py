"""Failures by cause: the source's (fatal, not the worker's fault) or the worker's (its host; retryable).

FFmpeg's stderr is classified in one place (``ffmpeg.classify_failure``); the worker reports the cause
with the failure, and a full cache during FFmpeg is a retryable failure of the worker.
"""

import dataclasses
import threading

import pytest

from tests.fixtures import ThreadedMaster, ffmpeg_available, make_clip, master_config, wait_for, worker_config
from worker import ffmpeg
from worker.errors import ApiRejected, Cause, FatalError, JobLost, MasterUnreachable, RetryableError
from worker.worker import Worker

ENOSPC_STDERR = ("[mp4 @ 0x55d0] Starting second pass: moving the moov atom to the beginning of the file\n"
                 "av_interleaved_write_frame(): No space left on device\n"
                 "Error writing trailer of /var/cache/converter/job_1/output.mp4: No space left on device\n"
                 "Conversion failed!\n")


@pytest.mark.parametrize("stderr", [
    "/tmp/in.mp4: Invalid data found when processing input\n",
    "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x1] moov atom not found\n/tmp/in.mp4: Invalid data found when processing input\n",
    "Output file #0 does not contain any stream\n",
    "[h264 @ 0x2] error while decoding MB 3 7, bytestream -5\nConversion failed!\n",
    "",
])
def test_ffmpeg_refusing_the_input_is_a_fatal_failure_of_the_source(stderr):
    error = ffmpeg.classify_failure("ffmpeg failed", stderr)
    assert isinstance(error, FatalError) and error.cause is Cause.SOURCE
    assert str(error).startswith("ffmpeg failed: ")


@pytest.mark.parametrize("stderr, reason", [
    (ENOSPC_STDERR, "No space left on device"),
    ("[out @ 0x3] Disk quota exceeded\nConversion failed!\n", "Disk quota exceeded"),
    ("[AVHWDeviceContext @ 0x4] Failed to create Vulkan device: VK_ERROR_INITIALIZATION_FAILED\n"
     "Device creation failed: -1313558101.\n", "Device creation failed"),
])
def test_ffmpeg_failing_on_the_host_is_a_retryable_failure_of_the_worker(stderr, reason):
    error = ffmpeg.classify_failure("ffmpeg failed", stderr)
    assert isinstance(error, RetryableError) and error.cause is Cause.WORKER
    assert reason in str(error)  # the line that blames the host, not FFmpeg's closing "Conversion failed!"


def test_each_error_type_carries_its_cause():
    assert RetryableError("cut").cause is Cause.WORKER
    assert MasterUnreachable("refused").cause is Cause.WORKER
    assert FatalError("cannot decode").cause is Cause.SOURCE
    assert FatalError("no mount", cause=Cause.WORKER).cause is Cause.WORKER
    assert ApiRejected(409, "output_exists", "taken").cause is Cause.SOURCE
    assert ApiRejected(401, "unauthorized", "bad token").cause is Cause.WORKER
    assert JobLost(409, "not_lease_owner", "re-leased").cause is Cause.SOURCE


# FFmpeg itself, as stubs (tiny shell scripts) ----------------------------------------------------

def run_stub(tmp_path, body: str) -> None:
    stub = tmp_path / "ffmpeg-stub"
    stub.write_text(f"#!/bin/sh\n{body}\n")
    stub.chmod(0o755)
    ffmpeg.run([str(stub)], duration=1.0, timeout=30, cancel=threading.Event(), kill_grace=0.2)


@pytest.mark.integration
def test_a_full_cache_during_ffmpeg_is_retryable_and_the_workers_fault(tmp_path):
    with pytest.raises(ffmpeg.FfmpegHostFailure, match="No space left on device") as caught:
        run_stub(tmp_path, f"printf '{ENOSPC_STDERR}' >&2\nexit 1")
    assert caught.value.cause is Cause.WORKER


@pytest.mark.integration
def test_ffmpeg_rejecting_its_input_is_fatal_and_the_sources_fault(tmp_path):
    with pytest.raises(ffmpeg.FfmpegRejectedInput, match="Invalid data found") as caught:
        run_stub(tmp_path, "echo 'in.mp4: Invalid data found when processing input' >&2\nexit 1")
    assert caught.value.cause is Cause.SOURCE


@pytest.mark.integration
def test_ffmpeg_killed_by_a_signal_is_the_workers_fault(tmp_path):
    with pytest.raises(RetryableError, match="signal 11") as caught:
        run_stub(tmp_path, "kill -SEGV $$")
    assert caught.value.cause is Cause.WORKER


# The worker against a real master --------------------------------------------------------------

def full_cache_ffmpeg(directory) -> str:
    """FFmpeg whose conversions (the runs with ``-progress``) fail as on a full disk; probes run the real one."""
    stub = directory / "ffmpeg-full-cache"
    stub.write_text("#!/bin/sh\n"
                    'case " $* " in *" -progress "*) ;; *) exec ffmpeg "$@" ;; esac\n'
                    f"printf '{ENOSPC_STDERR}' >&2\nexit 1\n")
    stub.chmod(0o755)
    return str(stub)


def registered_worker(tmp_path, master: ThreadedMaster, binary: str = "ffmpeg") -> Worker:
    config = worker_config(tmp_path, master.url)
    config = dataclasses.replace(config, ffmpeg=dataclasses.replace(config.ffmpeg, binary=binary, accel="cpu"))
    worker = Worker.from_config(config)
    worker.cache.mkdir(parents=True)
    worker.register()
    return worker


@pytest.mark.integration
@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe")
def test_worker_hands_a_job_back_for_another_try_when_its_cache_fills_during_ffmpeg(tmp_path):
    master = ThreadedMaster(master_config(tmp_path, max_attempts=3))
    try:
        make_clip(master.root / "in" / "clip.mp4", seconds=0.5, size="160x120", audio=False)
        worker = registered_worker(tmp_path, master, full_cache_ffmpeg(tmp_path))
        assert master.submit("in/clip.mp4", "out/clip.mp4", job_id="full").status_code == 201
        assert wait_for(worker.run_once, 10, what="the worker to claim the job")
        job = master.job("full")
        assert job["status"] == "pending", job  # retryable: back in the queue, not failed for good
        assert "No space left on device" in job["error"]
        assert not (master.root / "out" / "clip.mp4").exists()
    finally:
        master.stop()


@pytest.mark.integration
@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe")
def test_broken_sources_fail_without_quarantining_the_worker_that_tried_them(tmp_path):
    master = ThreadedMaster(master_config(tmp_path, quarantine_after=2, max_attempts=1))
    try:
        (master.root / "in").mkdir(parents=True)
        for i in range(3):  # one user's files that are not videos (text: random bytes now and then probe as audio)
            (master.root / "in" / f"random{i}.mp4").write_bytes(b"this is not a video, only text %d\n" % i * 2000)
            assert master.submit(f"in/random{i}.mp4", f"out/random{i}.mp4", job_id=f"bad{i}").status_code == 201
        make_clip(master.root / "in" / "clip.mp4", seconds=0.5, size="160x120", audio=False)
        assert master.submit("in/clip.mp4", "out/clip.mp4", job_id="good").status_code == 201
        worker = registered_worker(tmp_path, master)
        for _ in range(4):
            assert worker.run_once(), "no job came: the worker was quarantined"
        bad = [master.job(f"bad{i}") for i in range(3)]
        assert all(job["status"] == "failed" and job["attempts"] == 1 for job in bad), bad
        assert master.job("good")["status"] == "completed"
    finally:
        master.stop()
