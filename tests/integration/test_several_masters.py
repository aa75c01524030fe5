"""Several masters, one queue: PostgreSQL holds the jobs, a bucket holds the files, any master serves any worker.

Real processes: two ``converter-master`` on one PostgreSQL database and one SeaweedFS bucket prefix, a worker
on each, jobs submitted to either. Every job is done exactly once, whichever master took it in.
"""

from __future__ import annotations

import pytest
import requests

import signal

from master.states import TERMINAL, JobStatus
from tests.fixtures import Cluster, ffmpeg_available, make_clip, wait_for
from tests.haproxy import HAProxy

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg not installed")]


@pytest.fixture
def two_masters(tmp_path, postgres, seaweedfs):
    url = postgres.new_database()
    prefix = seaweedfs.prefix()
    masters = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        masters.append(Cluster(tmp_path / name, bucket=seaweedfs, s3={"prefix": prefix}, database={"url": url},
                               lease_seconds=5))
    yield masters
    for master in masters:
        master.stop()


def test_jobs_submitted_to_either_master_are_each_done_once_by_workers_of_both(two_masters, tmp_path):
    a, b = two_masters
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0, size="640x360")
    for i in range(6):
        a.put_source(f"in/{i}.mp4", clip, with_digest=True)
        (a if i % 2 else b).submit(f"in/{i}.mp4", f"out/{i}.mp4", f"j{i}")
    a.add_worker("wa")
    b.add_worker("wb")

    def all_done():
        jobs = requests.get(f"{b.url}/api/jobs", timeout=10).json()["jobs"]
        return jobs if len(jobs) == 6 and all(job["status"] == "completed" for job in jobs) else None

    jobs = wait_for(all_done, 180, 0.5, "six jobs to complete")
    assert all(job["attempts"] == 1 for job in jobs)
    assert {job["worker_id"] for job in jobs} <= {"wa", "wb"}
    for job in jobs:
        output = a.stored(job["output_path"])
        assert output is not None and len(output) == job["output_size"]
    assert requests.get(f"{a.url}/api/jobs/j3", timeout=10).json() == \
        requests.get(f"{b.url}/api/jobs/j3", timeout=10).json()  # one queue, seen from either master
    assert a.bucket.open_uploads() == []


def test_a_job_submitted_to_one_master_wakes_the_claimers_of_the_other(two_masters, tmp_path):
    a, b = two_masters

    def notices_heard(cluster: Cluster) -> float:
        text = requests.get(f"{cluster.url}/metrics", timeout=10).text
        line = next(line for line in text.splitlines() if line.startswith("converter_master_job_notices_total"))
        return float(line.split()[1])

    before = notices_heard(b)
    a.bucket.put("in/x.mp4", b"x", {"sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"})
    a.submit("in/x.mp4", "out/x.mp4", "n1")
    wait_for(lambda: notices_heard(b) > before, 10, 0.1, "master b to hear of the job (LISTEN/NOTIFY)")
    claimed = requests.post(f"{b.url}/api/worker/claim", json={"worker_id": "w", "wait": 5}, timeout=30)
    assert claimed.status_code == 200 and claimed.json()["id"] == "n1"
    assert requests.post(f"{a.url}/api/worker/claim", json={"worker_id": "w2", "wait": 0},
                         timeout=30).status_code == 204  # taken once


def test_behind_haproxy_losing_a_master_loses_no_job(two_masters, tmp_path):
    """Workers and users talk to HAProxy only; one master is killed mid-run; the other serves everything and
    every job completes once (the killed master's claims are leases, which the survivor's reaper requeues)."""
    a, b = two_masters
    proxy = HAProxy(tmp_path, [a.port, b.port]).start()
    try:
        clip = make_clip(tmp_path / "clip.mp4", seconds=1.0, size="640x360")
        for i in range(6):
            a.put_source(f"in/{i}.mp4", clip, with_digest=True)
            answer = requests.post(f"{proxy.url}/api/jobs", json={"id": f"h{i}", "source_path": f"in/{i}.mp4",
                                                                 "output_path": f"out/{i}.mp4",
                                                                 "profile": "h264-720p"}, timeout=30)
            assert answer.status_code == 201, answer.text
        a.add_worker("w1", master_url=proxy.url)
        a.add_worker("w2", master_url=proxy.url)
        wait_for(lambda: any(job["status"] == "completed" for job in
                             requests.get(f"{proxy.url}/api/jobs", timeout=10).json()["jobs"]), 120, 0.3,
                 "a first job to complete")
        a.master.signal(signal.SIGKILL)
        a.master.wait(10)

        def all_ended():
            jobs = requests.get(f"{proxy.url}/api/jobs", timeout=10).json()["jobs"]
            return jobs if all(JobStatus(job["status"]) in TERMINAL for job in jobs) else None

        jobs = wait_for(all_ended, 180, 0.5, "every job to end through the surviving master")
        assert [(job["id"], job["status"], job["error"]) for job in jobs if job["status"] != "completed"] == []
        assert len(jobs) == 6
        for job in jobs:
            assert a.stored(job["output_path"]) is not None
    finally:
        proxy.stop()
