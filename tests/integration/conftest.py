from __future__ import annotations

import pytest
import requests

from tests.fixtures import Process, free_port, wait_for, write_yaml


@pytest.fixture
def cluster(tmp_path):
    """Start a master process; ``add_worker`` starts worker processes against it."""
    port = free_port()
    root = tmp_path / "storage"
    master_cfg = write_yaml(tmp_path / "master.yaml", {
        "server": {"host": "127.0.0.1", "port": port},
        "storage": {"root": str(root)},
        "database": {"path": str(tmp_path / "master.db")},
        "jobs": {"lease_seconds": 5, "retry_delay": 0, "max_claim_wait": 5},
    })
    url = f"http://127.0.0.1:{port}"
    processes = [Process("converter-master", master_cfg, tmp_path / "master.log")]
    wait_for(lambda: _up(url), what="master to listen")

    class Cluster:
        pass

    c = Cluster()
    c.url, c.root, c.tmp = url, root, tmp_path

    def add_worker(worker_id="w1", ffmpeg_binary="ffmpeg", concurrency=1):
        metrics_port = free_port()
        cfg = write_yaml(tmp_path / f"{worker_id}.yaml", {
            "master": {"url": url},
            "worker": {"id": worker_id, "claim_wait": 2, "heartbeat_interval": 1, "concurrency": concurrency,
                       "metrics_host": "127.0.0.1", "metrics_port": metrics_port},
            "storage": {"cache_path": str(tmp_path / f"cache-{worker_id}")},
            "retry": {"attempts": 3, "base_delay": 0.05, "factor": 2, "cap": 0.5},
            "ffmpeg": {"binary": ffmpeg_binary, "timeout": 120},
        })
        process = Process("converter-worker", cfg, tmp_path / f"{worker_id}.log")
        process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        processes.append(process)
        return process

    def submit(source, output, job_id):
        response = requests.post(f"{url}/api/jobs", json={"id": job_id, "source_path": source,
                                                          "output_path": output, "profile": "h264-720p"}, timeout=10)
        assert response.status_code == 201, response.text

    c.add_worker, c.submit = add_worker, submit
    c.job = lambda job_id: requests.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
    c.wait_status = lambda job_id, *statuses, timeout=60: wait_for(
        lambda: c.job(job_id)["status"] in statuses and c.job(job_id), timeout, what=f"job {job_id} {statuses}")
    yield c
    for process in reversed(processes):
        process.stop()


def _up(url):
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.ConnectionError:
        return False
