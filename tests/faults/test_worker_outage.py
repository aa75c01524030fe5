"""A finished output is precious: the master away for longer than the transfer retries last.

The worker keeps the converted output in its cache and keeps trying to deliver it (``retry.upload_window``)
while the master cannot be reached; when the master is back on the same port and database, the upload
goes through and the job completes after exactly one conversion.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.faults.test_faults import assert_nothing_left, assert_verified_output, proxied, source
from tests.fixtures import Cluster, Process, wait_for

pytestmark = pytest.mark.integration

OUTAGE = 10.0  # seconds: more than the ~6 s the seed's transfer retries (3 tries, 2 s and 4 s apart) last
# Fast transfer retries, as in the other fault cases, so that only the upload window can bridge the outage.
RETRY = {"attempts": 3, "base_delay": 0.05, "factor": 2, "cap": 0.5, "upload_window": 60}


@pytest.fixture
def cluster(tmp_path):
    running = Cluster(tmp_path, lease_seconds=30)  # the lease outlives the outage, heartbeats or not
    yield running
    running.stop()


def stop_master(cluster: Cluster) -> None:
    cluster.master.signal(signal.SIGKILL)
    cluster.master.wait(30)
    cluster.master.stop()


def start_master_again(cluster: Cluster) -> None:
    cluster.master = cluster._start_master()  # same port, same database, same storage


def output_kept_for(worker: Process, job_id: str) -> float:
    """Seconds the worker has kept job ``job_id``'s output while trying to deliver it, as its log says."""
    pattern = rf"keeping the output of job {job_id}: delivery failed \(try \d+, (\d+) s of"
    return max((float(s) for s in re.findall(pattern, worker.output())), default=0.0)


def gated_ffmpeg(directory: Path) -> str:
    """FFmpeg whose conversions (the runs with ``-progress``) wait for ``<directory>/gate`` and leave
    ``<directory>/waiting`` meanwhile; the capability probe runs the real FFmpeg at once."""
    stub = directory / "ffmpeg-gated"
    stub.write_text("#!/bin/sh\n"
                    'case " $* " in *" -progress "*) ;; *) exec ffmpeg "$@" ;; esac\n'
                    f"touch {directory}/waiting\n"
                    f"while [ ! -e {directory}/gate ]; do sleep 0.1; done\n"
                    'exec ffmpeg "$@"\n')
    stub.chmod(0o755)
    return str(stub)


def assert_converted_once(cluster: Cluster, worker: Process, job_id: str) -> None:
    job = cluster.wait_status(job_id, "completed", "failed", timeout=90)
    assert_verified_output(cluster, job)
    assert job["attempts"] == 1, job
    assert worker.output().count(f"job {job_id}: converted") == 1
    assert "heartbeat failed" in worker.output()  # heartbeats went on being tried during the wait


def test_master_down_during_the_upload_for_longer_than_the_retries_then_back(cluster):
    src = source(cluster)
    proxy = proxied(cluster)
    proxy.rate["up"] = 150_000
    worker = cluster.add_worker("w1", master_url=proxy.url, retry=RETRY)
    cluster.submit(src, "out/a.mp4", "u1")
    wait_for(lambda: any(p.stat().st_size > 100_000 for p in cluster.root.rglob(".converter-tus-*")), 60,
             what="upload under way")
    stop_master(cluster)
    proxy.drop_connections()
    wait_for(lambda: output_kept_for(worker, "u1") >= OUTAGE, OUTAGE + 30, interval=0.5,
             what=f"the worker to keep the output for {OUTAGE:.0f} s")
    proxy.rate["up"] = 0
    start_master_again(cluster)
    assert_converted_once(cluster, worker, "u1")
    assert_nothing_left(cluster)
    proxy.close()


def test_master_down_when_the_conversion_ends_then_back(cluster):
    src = source(cluster, seconds=2.0, size="640x360")
    worker = cluster.add_worker("w1", gated_ffmpeg(cluster.tmp), retry=RETRY)
    cluster.submit(src, "out/a.mp4", "u2")
    wait_for(lambda: (cluster.tmp / "waiting").exists(), 30, what="the conversion to start")
    stop_master(cluster)
    (cluster.tmp / "gate").touch()  # the conversion ends while the master is away: every upload is refused
    wait_for(lambda: output_kept_for(worker, "u2") >= OUTAGE, OUTAGE + 60, interval=0.5,
             what=f"the worker to keep the output for {OUTAGE:.0f} s")
    assert "Connection refused" in worker.output() or "ConnectionError" in worker.output()
    start_master_again(cluster)
    assert_converted_once(cluster, worker, "u2")
    assert_nothing_left(cluster)
