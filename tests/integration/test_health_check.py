"""Health checks (profile ``health-check``, issue 18): a real master, worker and FFmpeg decode the whole source and
the job records whether it is healthy. A corrupt file is a completed check listing FFmpeg's errors after one
attempt, never retried; nothing is ever written for a health check. The store's part runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from master.states import JobStatus
from master.store import GuardFailed, JobStore, NotOwner, OutputBusy
from tests.fixtures import make_clip
from tests.integration.test_cli import converterctl
from worker import health
from worker.config import FfmpegSection
from worker.conversion import Converter
from worker.metrics import WorkerMetrics

pytestmark = pytest.mark.integration


def corrupted(good: Path, bad: Path, seed: int = 18) -> Path:
    """``good`` with a fifth of its middle overwritten by random bytes: the container still opens, the video and
    audio inside do not decode cleanly."""
    data = bytearray(good.read_bytes())
    rng = random.Random(seed)
    start, length = len(data) * 2 // 5, len(data) // 5
    data[start:start + length] = bytes(rng.randrange(256) for _ in range(length))
    bad.write_bytes(bytes(data))
    return bad


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("health")
    good = make_clip(d / "good.mkv", seconds=2.0, size="320x180")
    not_video = d / "notes.mkv"
    not_video.write_bytes(b"this is not a video, whatever its name says\n" * 200)
    return {"good": good, "bad": corrupted(good, d / "bad.mkv"), "not-video": not_video}


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def submit(cluster, job_id: str, source: str, **extra) -> requests.Response:
    return requests.post(f"{cluster.url}/api/jobs", json={"id": job_id, "source_path": source,
                                                          "profile": "health-check", **extra}, timeout=30)


def test_a_batch_of_health_checks_reports_the_corrupt_files_once_and_writes_nothing(cluster, clips):
    for name, clip in clips.items():
        cluster.put_source(f"in/{name}.mkv", clip)
    before = files_under(cluster.root)
    refused = submit(cluster, "with-output", "in/good.mkv", output_path="out/good.mp4")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_path")
    for name in clips:
        assert submit(cluster, name, f"in/{name}.mkv").status_code == 201
    assert cluster.job("good")["output_path"] == ""
    worker = cluster.add_worker("w1")
    jobs = {name: cluster.wait_status(name, "completed", "failed", timeout=120) for name in clips}

    good = jobs["good"]
    assert good["status"] == "completed" and good["attempts"] == 1
    assert good["health"] == {"healthy": True, "errors": [], "error_count": 0, "decoder": "cpu", "fallback": None}
    assert (good["output_path"], good["output_size"], good["accel"]) == ("", None, "cpu")

    for name in ("bad", "not-video"):  # a result, not a failure: completed after one attempt, never retried
        job = jobs[name]
        assert (job["status"], job["attempts"], job["error"]) == ("completed", 1, None), job
        assert job["health"]["healthy"] is False and job["health"]["errors"], job["health"]
        assert job["health"]["error_count"] >= len(job["health"]["errors"])
        attempts = requests.get(f"{cluster.url}/api/jobs/{name}/attempts", timeout=10).json()["attempts"]
        assert [a["outcome"] for a in attempts] == ["completed"]
    assert any("invalid data" in line.lower() for line in jobs["not-video"]["health"]["errors"])

    assert files_under(cluster.root) == before  # no output anywhere, nothing left beside the sources
    assert not list((cluster.tmp / "cache-w1").glob("job_*"))  # the worker's copies of the sources are gone
    output = requests.get(f"{cluster.url}/api/jobs/bad/output", timeout=10)
    assert (output.status_code, output.json()["error"]) == (404, "output_not_found")
    master = samples(f"{cluster.url}/metrics")
    assert master[("converter_master_health_checks_total", (("result", "healthy"),))] == 1
    assert master[("converter_master_health_checks_total", (("result", "unhealthy"),))] == 2
    assert master[("converter_master_jobs_completed_total", ())] == 0  # no output was stored
    assert samples(worker.metrics_url)[("converter_worker_jobs_finished_total", (("outcome", "completed"),))] == 3

    shown = converterctl(cluster.url, "show", "bad")
    assert shown.returncode == 0 and "health: no, " in shown.stdout and jobs["bad"]["health"]["errors"][0] \
        in shown.stdout
    page = requests.get(f"{cluster.url}/console/jobs/bad", timeout=10, allow_redirects=False)
    if page.status_code == 200:  # the console is open without tokens
        assert "not healthy" in page.text and "Download the output" not in page.text


def test_converterctl_submits_a_health_check_without_an_output(cluster, clips):
    cluster.put_source("in/good.mkv", clips["good"])
    submitted = converterctl(cluster.url, "--json", "submit", "in/good.mkv", "--profile", "health-check")
    assert submitted.returncode == 0, submitted.stderr
    assert '"output_path": ""' in submitted.stdout


@pytest.fixture(scope="module")
def cpu():
    return Converter.start(FfmpegSection(binary="ffmpeg", accel="cpu", stall_timeout=60, timeout=120),
                           WorkerMetrics(CollectorRegistry()))


def test_the_decode_lists_errors_bounded_and_counted(cpu, clips):
    result = health.check(cpu, clips["bad"], threading.Event())
    assert not result.healthy and result.decoder == "cpu"
    assert 0 < len(result.errors) <= 50 and result.error_count >= len(result.errors)
    assert all(len(line) <= 300 for line in result.errors)
    clean = health.check(cpu, clips["good"], threading.Event())
    assert (clean.healthy, clean.errors, clean.error_count) == (True, (), 0)
    assert clean.media_seconds == pytest.approx(2.0, abs=0.2)


def test_the_vulkan_form_decodes_on_the_gpu_or_leaves_the_verdict_to_the_cpu(clips):
    """accel vulkan with vulkan_decode true: a device that decodes gives a Vulkan verdict; one that cannot (lavapipe
    has no video queue) gives way to the CPU, whose verdict stands (healthy: the file is fine)."""
    from worker import capabilities
    settings = FfmpegSection(binary=capabilities.select_binary("auto"), accel="vulkan", vulkan_decode=True,
                             stall_timeout=60, timeout=120)
    converter = Converter.start(settings, WorkerMetrics(CollectorRegistry()))
    if not converter.vulkan_usable:
        pytest.skip("no usable Vulkan device here")
    result = health.check(converter, clips["good"], threading.Event())
    assert result.healthy and result.errors == ()
    assert result.decoder == "vulkan" or (result.decoder == "cpu" and result.fallback), result
    bad = health.check(converter, clips["bad"], threading.Event())
    assert not bad.healthy and bad.decoder in ("cpu", "vulkan")


# -- the store, on each backend ----------------------------------------------------------------------------------------

@pytest.fixture
def store(database):
    s = JobStore(database)
    yield s
    s.close()


def add(store, job_id, output="", profile="health-check"):
    return store.create_job(job_id=job_id, source_path=f"in/{job_id}.mkv", output_path=output, profile=profile,
                            source_size=10, source_sha256="00" * 32, source_mtime_ns=1, max_attempts=3)


def test_the_store_keeps_a_health_result_and_lets_health_checks_share_no_output(store, database):
    add(store, "h1")
    add(store, "h2")  # any number of active jobs without an output: the one-owner index leaves them out
    add(store, "c1", output="out/c1.mp4", profile="h264-720p")
    with pytest.raises(OutputBusy):  # an output still has one owner
        add(store, "c2", output="out/c1.mp4", profile="h264-720p")
    store.register_worker(worker_id="w1", hostname="h", capabilities={}, concurrency=1)
    claimed = [store.claim_next("w1", lease_seconds=60).id for _ in range(3)]
    assert sorted(claimed) == ["c1", "h1", "h2"]
    result = {"healthy": False, "errors": ["[h264 @ 0x1] Invalid NAL unit size (1633 > 478)."], "error_count": 7,
              "decoder": "cpu", "fallback": None}
    with pytest.raises(NotOwner):
        store.complete_health_check("h1", result, worker_id="w2")
    with pytest.raises(GuardFailed):  # a conversion completes with its output, not this way
        store.complete_health_check("c1", result, worker_id="w1")
    job = store.complete_health_check("h1", result, worker_id="w1")
    assert (job.status, job.health, job.output_size, job.attempts) == (JobStatus.COMPLETED, result, None, 1)
    assert job.to_dict()["health"] == result and store.get_job("h2").health is None
    assert [a["outcome"] for a in store.attempts_of("h1")] == ["completed"]
    again = JobStore(database)  # kept as JSON, read back as the same object (another master's connection)
    try:
        assert again.get_job("h1").health == result
    finally:
        again.close()
