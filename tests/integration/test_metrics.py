"""Both /metrics pages after a real job: valid for promtool, and values equal to what happened."""

import shutil
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import make_clip

pytestmark = pytest.mark.integration


def samples(url):
    text = requests.get(url, timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, values


def value(values, name, **labels):
    return values[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def finished_job(cluster):
    make_clip(cluster.root / "in" / "clip.mp4", seconds=1.0, size="640x360")
    worker = cluster.add_worker()
    cluster.submit("in/clip.mp4", "out/clip.mp4", "m1")
    job = cluster.wait_status("m1", "completed", "failed")
    assert job["status"] == "completed"
    return cluster, worker, job


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
@pytest.mark.parametrize("side", ["master", "worker"])
def test_promtool_accepts_the_metrics_page(finished_job, side):
    cluster, worker, _ = finished_job
    url = f"{cluster.url}/metrics" if side == "master" else worker.metrics_url
    text = requests.get(url, timeout=10).text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_values_match_the_job(finished_job):
    cluster, worker, job = finished_job
    _, values = samples(worker.metrics_url)
    assert value(values, "converter_worker_transfer_bytes_total", direction="download") == job["source_size"]
    assert value(values, "converter_worker_transfer_bytes_total", direction="upload") == job["output_size"]
    assert value(values, "converter_worker_transfer_duration_seconds_count", direction="upload") == 1
    assert value(values, "converter_worker_transfer_retries_total", direction="download") == 0
    assert value(values, "converter_worker_conversion_duration_seconds_count", accel="cpu", profile="h264-720p") == 1
    assert value(values, "converter_worker_jobs_finished_total", outcome="completed") == 1
    assert value(values, "converter_worker_jobs_in_progress") == 0
    assert value(values, "converter_worker_cache_free_bytes") > 0


def test_master_values_match_the_job(finished_job):
    cluster, _, job = finished_job
    _, values = samples(f"{cluster.url}/metrics")
    assert value(values, "converter_master_jobs", status="completed") == 1
    assert value(values, "converter_master_jobs", status="pending") == 0
    assert value(values, "converter_master_jobs_submitted_total") == 1
    assert value(values, "converter_master_jobs_completed_total") == 1
    assert value(values, "converter_master_bytes_served_total") == job["source_size"]
    assert value(values, "converter_master_bytes_received_total") == job["output_size"]  # tus: the raw file
    assert value(values, "converter_master_queue_wait_seconds_count") == 1
    assert value(values, "converter_master_workers_active") == 1
    assert value(values, "converter_master_http_request_duration_seconds_count", handler="UploadHandler",
                 method="PATCH", code="204") == 1
