"""The real worker and master processes with accel: vulkan — on lavapipe, and with stub FFmpegs that fail or hang
only in their Vulkan runs (so the CPU fallback, its counter and the disabling of Vulkan are seen end to end)."""

import stat

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import (LAVAPIPE_TRIES, Process, ffprobe, free_port, lavapipe_crashed, make_clip, process_alive,
                            wait_for, write_yaml)

pytestmark = pytest.mark.integration


@pytest.fixture
def start_worker(cluster):
    started = []

    def start(worker_id="vk", worker=None, **ffmpeg):
        metrics_port = free_port()
        cfg = write_yaml(cluster.tmp / f"{worker_id}.yaml", {
            "master": {"url": cluster.url},
            "worker": {"id": worker_id, "claim_wait": 2, "heartbeat_interval": 1, "metrics_host": "127.0.0.1",
                       "metrics_port": metrics_port, **(worker or {})},
            "storage": {"cache_path": str(cluster.tmp / f"cache-{worker_id}")},
            "retry": {"attempts": 3, "base_delay": 0.05, "factor": 2, "cap": 0.5},
            "ffmpeg": {"binary": "ffmpeg", "timeout": 120, "accel": "vulkan", **ffmpeg},
        })
        process = Process("converter-worker", cfg, cluster.tmp / f"{worker_id}.log")
        process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def submit(cluster, job_id, profile="h264-720p", source="in/clip.mp4"):
    response = requests.post(f"{cluster.url}/api/jobs", json={"id": job_id, "source_path": source,
                                                              "output_path": f"out/{job_id}.mp4", "profile": profile},
                             timeout=10)
    assert response.status_code == 201, response.text


def capabilities(cluster, worker_id="vk"):
    workers = requests.get(f"{cluster.url}/api/workers", timeout=10).json()["workers"]
    return next(w["capabilities"] for w in workers if w["id"] == worker_id)


def samples(process):
    text = requests.get(process.metrics_url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def ffmpeg_stub(path, pattern: str, behaviour: str) -> str:
    """The real FFmpeg, except that a command line matching the shell ``case`` ``pattern`` runs ``behaviour``."""
    path.write_text(f"""#!/bin/sh
case " $* " in
  {pattern}) {behaviour};;
esac
exec ffmpeg "$@"
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def vulkan_only_stub(tmp_path, behaviour):
    """A conversion with ``hwupload`` (a Vulkan form) runs ``behaviour`` instead."""
    return ffmpeg_stub(tmp_path / "ffmpeg-vk-stub", '*" -progress "*hwupload*|*hwupload*" -progress "*',
                       f"echo $$ > {tmp_path}/vk-stub.pid; {behaviour}")


def run_past_a_lavapipe_crash(cluster) -> tuple[dict, int]:
    """(the first job whose Vulkan run did not segfault, or the last one; how many did)."""
    for crashes in range(LAVAPIPE_TRIES):
        job_id = f"vk{crashes + 1}"
        submit(cluster, job_id)
        job = cluster.wait_status(job_id, "completed", "failed")
        if not lavapipe_crashed(job["vulkan_fallback"]):
            break
    return job, crashes


def test_a_job_runs_through_the_real_vulkan_path_on_lavapipe(cluster, start_worker):
    # scaled down to 960x720 (4:3): an upscaled 320x240 clip's output is larger than its source, and discard_larger
    # (which holds for upscales too) would keep the source instead of the Vulkan path's output
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="1440x1080")
    worker = start_worker()
    wait_for(lambda: requests.get(f"{cluster.url}/api/workers", timeout=5).json()["workers"], 20, what="register")
    caps = capabilities(cluster)
    assert caps["vulkan"]["available"] and caps["vulkan"]["type"] == "cpu" and "scale_vulkan" in caps["vulkan"]["filters"]
    assert caps["accel"] == ["vulkan", "cpu"] and caps["accel_mode"] == "vulkan"
    job, crashes = run_past_a_lavapipe_crash(cluster)
    assert (job["status"], job["accel"], job["vulkan_fallback"]) == ("completed", "vulkan", None), job
    video = next(s for s in ffprobe(cluster.root / job["output_path"])["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 960, 720)
    assert f"job {job['id']}: converted 1.0 s of media" in worker.output()
    assert "(vulkan, libx264, speed" in worker.output()
    metrics = samples(worker)
    assert metrics[("converter_worker_conversion_duration_seconds_count",
                    (("accel", "vulkan"), ("profile", "h264-720p")))] == 1
    assert metrics[("converter_worker_vulkan_available", ())] == 1
    assert metrics[("converter_worker_vulkan_fallbacks_total", ())] == crashes
    assert worker.output().count("; vulkan: llvmpipe") == 1  # the probe is logged once


def test_vulkan_failures_fall_back_to_the_cpu_and_then_disable_vulkan(cluster, start_worker):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="320x240")
    stub = vulkan_only_stub(cluster.tmp, "echo 'vulkan exploded' >&2; exit 1")
    worker = start_worker(binary=stub, vulkan_max_failures=2)
    for job_id in ("f1", "f2", "f3"):
        submit(cluster, job_id)
        job = cluster.wait_status(job_id, "completed", "failed")
        assert (job["status"], job["attempts"]) == ("completed", 1), job
    log = worker.output()
    assert log.count("Vulkan run failed (ffmpeg failed: vulkan exploded); rerunning on the CPU") == 2
    assert "Vulkan disabled until the worker restarts: 2 consecutive Vulkan failures" in log
    metrics = samples(worker)
    assert metrics[("converter_worker_vulkan_fallbacks_total", ())] == 2  # f3 ran on the CPU from the start
    assert metrics[("converter_worker_vulkan_available", ())] == 0
    assert metrics[("converter_worker_conversion_duration_seconds_count", (("accel", "cpu"), ("profile", "h264-720p")))] == 3
    caps = capabilities(cluster)  # re-sent when Vulkan was disabled
    assert caps["accel"] == ["cpu"] and caps["vulkan"]["disabled"].startswith("2 consecutive Vulkan failures")


def test_a_hung_vulkan_run_is_killed_by_the_watchdog_and_rerun_on_the_cpu(cluster, start_worker):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="320x240")
    stub = vulkan_only_stub(cluster.tmp, "trap '' TERM; exec sleep 600")  # like the H200 decode hang
    # 3 s: long enough that the CPU rerun, slow to start on a loaded machine, is not taken for a stall as well
    worker = start_worker(binary=stub, stall_timeout=3.0, kill_grace=0.5)
    submit(cluster, "hang")
    job = cluster.wait_status("hang", "completed", "failed")
    assert (job["status"], job["attempts"]) == ("completed", 1), job
    assert not process_alive(int((cluster.tmp / "vk-stub.pid").read_text()))
    assert "Vulkan run failed (ffmpeg made no progress for 3 s and was killed); rerunning on the CPU" in worker.output()
    assert samples(worker)[("converter_worker_vulkan_fallbacks_total", ())] == 1


def decode_hang_stub(tmp_path, codec):
    """The start-up probe's Vulkan decode of a ``codec`` sample hangs, deaf to SIGTERM."""
    return ffmpeg_stub(tmp_path / f"ffmpeg-decode-{codec}-stub", f'*" -hwaccel vulkan "*"/{codec}-"*',
                       f"echo $$ >> {tmp_path}/decode-stub.pids; trap '' TERM; exec sleep 600")


def registered(cluster, worker_id="vk", seconds=90):
    wait_for(lambda: any(w["id"] == worker_id for w in
                         requests.get(f"{cluster.url}/api/workers", timeout=5).json()["workers"]), seconds,
             what="register")
    return capabilities(cluster, worker_id)


def test_a_decode_that_hangs_in_the_probe_turns_vulkan_decode_off_for_that_codec_only(cluster, start_worker):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="320x240")
    worker = start_worker(binary=decode_hang_stub(cluster.tmp, "hevc"), decode_probe_timeout=2)
    probe = registered(cluster)["vulkan"]["decode_probe"]
    assert probe["hevc/8bit/hd"] == "hung: no answer in 2 s"
    assert {probe[f"hevc/{c}"] for c in ("8bit/uhd", "10bit/hd", "10bit/uhd")} == {"skipped: hevc/8bit/hd hung"}
    # h264 has its own outcome: on lavapipe (no video queue) a real failure, on a GPU "ok"; never the hang's
    assert probe["h264/8bit/hd"] == "ok" or probe["h264/8bit/hd"].startswith("failed: ")
    assert not any(outcome.startswith("hung") or "hevc" in outcome
                   for key, outcome in probe.items() if not key.startswith("hevc/"))
    assert registered(cluster)["devices"][0]["decode_probe"] == probe
    assert not any(process_alive(int(pid)) for pid in (cluster.tmp / "decode-stub.pids").read_text().split())
    assert ("Vulkan decode of hevc/8bit/hd on device 0 hung: no answer in 2 s: Vulkan decode off for hevc there"
            in worker.output())
    assert samples(worker)[("converter_worker_vulkan_decode_proven",
                            (("decode", "hevc/8bit/hd"), ("device", "0")))] == 0
    submit(cluster, "after-hang")  # jobs still run, on the Vulkan form with the CPU decoding
    assert cluster.wait_status("after-hang", "completed", "failed")["status"] == "completed"
    assert "(vulkan, libx264, speed" in worker.output()


def test_slots_spread_over_the_listed_devices_and_a_device_that_fails_is_left_out_alone(cluster, start_worker):
    """[0, 0, 5]: lavapipe twice (FFmpeg opens a device once per process, so two entries may name it) and a
    device that does not exist; three slots, the third pinned to the missing device, runs on the others."""
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="320x240")
    for job_id in ("d1", "d2", "d3"):
        submit(cluster, job_id)
    worker = start_worker(worker={"concurrency": 3}, vulkan_devices=[0, 0, 5], vulkan_decode=False)
    caps = registered(cluster)
    devices = caps["devices"]
    assert [(d["position"], d["index"], d["available"]) for d in devices] == [(0, "0", True), (1, "0", True),
                                                                              (2, "5", False)]
    assert devices[2]["error"].startswith("no Vulkan device 5")
    for job_id in ("d1", "d2", "d3"):
        assert cluster.wait_status(job_id, "completed", "failed")["status"] == "completed"
    metrics = samples(worker)
    ran = {device: metrics[("converter_worker_vulkan_device_conversions_total",
                            (("device", device), ("outcome", "ok")))] for device in ("0", "1", "2")}
    assert sum(ran.values()) == 3 and ran["2"] == 0, ran
    assert [metrics[("converter_worker_vulkan_device_available", (("device", d),))] for d in "012"] == [1, 1, 0]
