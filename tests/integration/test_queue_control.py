"""Priorities, pauses and space saved through the HTTP API of a real master, on both queue backends; stats and the
bytes-saved counter checked against jobs a real worker ran with FFmpeg."""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading
import time

import pytest
import requests

from master.config import DatabaseConfig
from tests.fixtures import Cluster, ThreadedMaster, ffmpeg_available, make_clip, master_config, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def config(request, tmp_path):
    config = master_config(tmp_path)
    if request.param == "postgres":
        config = dataclasses.replace(config, database=DatabaseConfig(url=request.getfixturevalue("postgres")
                                                                     .new_database()))
    return config


@pytest.fixture
def master(config):
    running = ThreadedMaster(config)
    (running.root / "in").mkdir(parents=True, exist_ok=True)
    yield running
    running.stop()


def put(master, name: str) -> str:
    (master.root / "in" / name).write_bytes(os.urandom(1000))
    return f"in/{name}"


def submit(master, job_id: str, **fields):
    body = {"id": job_id, "source_path": put(master, f"{job_id}.mkv"), "output_path": f"out/{job_id}.mp4",
            "profile": "h264-720p", **fields}
    return requests.post(f"{master.url}/api/jobs", json=body, timeout=10)


def api_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["message"]
    return response.json()


def claim(master, worker_id: str = "w1", wait: float = 0):
    return requests.post(f"{master.url}/api/worker/claim", json={"worker_id": worker_id, "wait": wait}, timeout=30)


def register(master, worker_id: str) -> None:
    response = requests.post(f"{master.url}/api/worker/register", json={"worker_id": worker_id}, timeout=10)
    assert response.status_code == 200, response.text


class TestPriorities:
    def test_claims_follow_priority_then_age_and_a_pending_job_can_be_raised(self, master):
        assert submit(master, "low", priority=-5).json()["priority"] == -5
        assert submit(master, "plain").json()["priority"] == 0  # the profile's default
        assert submit(master, "high", priority=50).status_code == 201
        assert submit(master, "later").status_code == 201
        raised = requests.patch(f"{master.url}/api/jobs/later", json={"priority": 60}, timeout=10)
        assert raised.status_code == 200 and raised.json()["priority"] == 60
        assert [claim(master).json()["id"] for _ in range(4)] == ["later", "high", "plain", "low"]

    @pytest.mark.parametrize("value", ["5", 1.5, 10**6, -1001, True, None, [1]])
    def test_a_bad_priority_is_400_invalid_priority(self, master, value):
        if value is not None:
            api_error(submit(master, "j", priority=value), 400, "invalid_priority")
        assert submit(master, "ok").status_code == 201
        api_error(requests.patch(f"{master.url}/api/jobs/ok", json={"priority": value}, timeout=10), 400,
                  "invalid_priority")

    def test_a_multipart_submission_carries_its_priority(self, master):
        response = requests.post(f"{master.url}/api/jobs", files={"video": ("a.mkv", b"x" * 100)},
                                 data={"profile": "h264-720p", "priority": "7"}, timeout=10)
        assert response.status_code == 201 and response.json()["priority"] == 7
        bad = requests.post(f"{master.url}/api/jobs", files={"video": ("b.mkv", b"x" * 100)},
                            data={"profile": "h264-720p", "priority": "1.5"}, timeout=10)
        api_error(bad, 400, "invalid_priority")

    def test_only_a_pending_jobs_priority_changes(self, master):
        submit(master, "j1")
        claim(master)
        body = api_error(requests.patch(f"{master.url}/api/jobs/j1", json={"priority": 3}, timeout=10), 409,
                         "job_not_pending")
        assert "processing" in body["message"]
        api_error(requests.patch(f"{master.url}/api/jobs/ghost", json={"priority": 3}, timeout=10), 404,
                  "job_not_found")
        api_error(requests.patch(f"{master.url}/api/jobs/j1", json={"profile": "x"}, timeout=10), 400,
                  "unknown_field")


class TestQueuePause:
    def test_a_paused_queue_claims_nothing_even_after_a_master_restart(self, config):
        master = ThreadedMaster(config)
        (master.root / "in").mkdir(parents=True, exist_ok=True)
        try:
            submit(master, "j1")
            submit(master, "j2")
            claimed = claim(master).json()["id"]
            paused = requests.post(f"{master.url}/api/queue/pause", timeout=10).json()
            assert paused["paused"] is True and paused["jobs"]["processing"] == 1
            refused = claim(master)
            assert refused.status_code == 204 and refused.headers["X-Claims-Paused"] == "queue"
            # the running job goes on to the end while paused
            heartbeat = requests.post(f"{master.url}/api/worker/heartbeat", params={"job_id": claimed},
                                      json={"worker_id": "w1", "progress": 50}, timeout=10)
            assert heartbeat.status_code == 200
        finally:
            master.stop()
        master = ThreadedMaster(config)  # a restart: the pause is in the database
        try:
            state = requests.get(f"{master.url}/api/queue", timeout=10).json()
            assert state["paused"] is True and state["paused_at"] == paused["paused_at"]
            assert claim(master).status_code == 204
            assert requests.post(f"{master.url}/api/queue/resume", timeout=10).json()["paused"] is False
            assert claim(master).json()["id"] == "j2"
        finally:
            master.stop()

    def test_resume_wakes_a_claim_already_waiting(self, master):
        submit(master, "j1")
        requests.post(f"{master.url}/api/queue/pause", timeout=10)
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(claim(master, wait=5)))
        started = time.monotonic()
        waiting.start()
        wait_for(lambda: master.requests_in_progress() >= 1, 5, what="the claim to wait")
        requests.post(f"{master.url}/api/queue/resume", timeout=10)
        waiting.join(10)
        assert answers[0].status_code == 200 and answers[0].json()["id"] == "j1"
        assert time.monotonic() - started < 4


class TestWorkerPause:
    def test_a_paused_worker_claims_nothing_while_others_do_and_stays_paused_after_a_restart(self, config):
        master = ThreadedMaster(config)
        (master.root / "in").mkdir(parents=True, exist_ok=True)
        try:
            register(master, "slow")
            register(master, "fast")
            submit(master, "j1")
            submit(master, "j2")
            paused = requests.post(f"{master.url}/api/workers/slow/pause", timeout=10).json()
            assert paused["id"] == "slow" and paused["paused"] is True
            refused = claim(master, "slow")
            assert refused.status_code == 204 and refused.headers["X-Claims-Paused"] == "worker"
            assert claim(master, "fast").json()["id"] == "j1"
        finally:
            master.stop()
        master = ThreadedMaster(config)
        try:
            register(master, "slow")  # the worker restarts too, and registers again
            workers = {w["id"]: w for w in requests.get(f"{master.url}/api/workers", timeout=10).json()["workers"]}
            assert workers["slow"]["paused"] is True and workers["fast"]["paused"] is False
            assert claim(master, "slow").status_code == 204
            resumed = requests.post(f"{master.url}/api/workers/slow/resume", timeout=10).json()
            assert resumed["paused"] is False and resumed["paused_at"] is None
            assert claim(master, "slow").json()["id"] == "j2"
        finally:
            master.stop()

    def test_an_unknown_or_malformed_worker_id_is_refused(self, master):
        for action in ("pause", "resume"):
            api_error(requests.post(f"{master.url}/api/workers/ghost/{action}", timeout=10), 404, "worker_not_found")
            api_error(requests.post(f"{master.url}/api/workers/%20bad/{action}", timeout=10), 400,
                      "invalid_worker_id")

    def test_a_bad_schedule_report_is_refused(self, master):
        for schedule in ({"open": "yes"}, {"windows": "22:00-07:00", "open": True}, {"open": True, "x": 1},
                         {"open": False, "next_change": -1}):
            response = requests.post(f"{master.url}/api/worker/register", json={"worker_id": "w",
                                                                               "schedule": schedule}, timeout=10)
            api_error(response, 400, "invalid_field")


def test_a_worker_process_outside_its_schedule_registers_as_scheduled_off_and_claims_nothing(tmp_path):
    """worker.schedule from the YAML, the real clock: a one-hour window six hours from now."""
    start = datetime.datetime.now() + datetime.timedelta(hours=6)
    window = f"{start:%H:%M}-{start + datetime.timedelta(hours=1):%H:%M}"
    cluster = Cluster(tmp_path)
    try:
        (cluster.root / "in").mkdir(parents=True)
        (cluster.root / "in" / "a.mkv").write_bytes(os.urandom(1000))
        cluster.submit("in/a.mkv", "out/a.mp4", "a")
        worker = cluster.add_worker("night", schedule=[window])
        record = wait_for(lambda: _registered(cluster, "night"), 60, what="the worker to register")
        assert record["scheduled_off"] is True and record["schedule"]["windows"] == [window]
        assert record["schedule"]["next_change"] == pytest.approx(start.replace(second=0, microsecond=0)
                                                                  .timestamp(), abs=1)
        wait_for(lambda: "converter_worker_schedule_open 0.0" in requests.get(worker.metrics_url, timeout=5).text,
                 30, what="the worker loop to find itself outside its window")
        assert cluster.job("a")["status"] == "pending"
    finally:
        cluster.stop()


def _registered(cluster, worker_id: str) -> dict | None:
    workers = requests.get(f"{cluster.url}/api/workers", timeout=10).json()["workers"]
    return next((w for w in workers if w["id"] == worker_id), None)


def test_stats_refuses_a_bad_days_parameter(master):
    for days in ("0", "x", "1.5", "99999"):
        api_error(requests.get(f"{master.url}/api/stats", params={"days": days}, timeout=10), 400,
                  "invalid_parameter")
    empty = requests.get(f"{master.url}/api/stats", timeout=10).json()
    assert empty["days"] == 30 and empty["totals"] == {"jobs": 0, "source_bytes": 0, "output_bytes": 0,
                                                       "saved_bytes": 0}


@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg")
def test_stats_and_the_saved_bytes_counter_add_up_to_the_jobs_run(tmp_path):
    """Two workers convert three tiny clips, one of them upscaled (its output larger than its source, kept: its
    profile upscales on purpose, discard_larger false): the totals, each group and the counter agree with the
    jobs' own sizes."""
    cluster = Cluster(tmp_path, profiles={"upscale-720p": {"base": "h264-720p", "discard_larger": False}})
    try:
        clips = {"big": make_clip(tmp_path / "big.mp4", seconds=1.0, size="1280x720"),
                 "small": make_clip(tmp_path / "small.mp4", seconds=1.0, size="160x120"),
                 "hd": make_clip(tmp_path / "hd.mp4", seconds=1.0, size="1920x1080")}
        for name, clip in clips.items():
            cluster.put_source(f"in/{name}.mp4", clip)
        cluster.submit("in/big.mp4", "out/big.mp4", "big")
        cluster.submit("in/small.mp4", "out/small.mp4", "small", profile="upscale-720p")
        cluster.submit("in/hd.mp4", "out/hd.mkv", "hd", profile="h264-1080p")
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        jobs = wait_for(lambda: _all_completed(cluster, clips), 120, what="three jobs to complete")
        stats = requests.get(f"{cluster.url}/api/stats", timeout=10).json()
        saved = {job_id: job["source_size"] - job["output_size"] for job_id, job in jobs.items()}
        assert all(job["saved_bytes"] == saved[job_id] for job_id, job in jobs.items())
        assert saved["small"] < 0 < saved["big"]  # 160x120 scaled up to 720p: the output is larger
        assert not jobs["small"]["kept_source"]
        assert stats["totals"] == {"jobs": 3, "source_bytes": sum(j["source_size"] for j in jobs.values()),
                                   "output_bytes": sum(j["output_size"] for j in jobs.values()),
                                   "saved_bytes": sum(saved.values())}
        for group, key in (("by_profile", "profile"), ("by_worker", "worker_id")):
            expected: dict[str, int] = {}
            for job_id, job in jobs.items():
                expected[job[key]] = expected.get(job[key], 0) + saved[job_id]
            assert {row[key]: row["saved_bytes"] for row in stats[group]} == expected
        assert sum(row["jobs"] for row in stats["by_day"]) == 3
        assert sum(row["saved_bytes"] for row in stats["by_day"]) == sum(saved.values())
        metrics = requests.get(f"{cluster.url}/metrics", timeout=10).text
        counted = {profile: _sample(metrics, f'converter_master_bytes_saved_total{{profile="{profile}"}}')
                   for profile in ("h264-720p", "h264-1080p")}
        assert counted == {"h264-720p": max(saved["big"], 0), "h264-1080p": max(saved["hd"], 0)}
        assert f'converter_master_bytes_saved_total{{profile="upscale-720p"}} ' not in metrics or _sample(
            metrics, 'converter_master_bytes_saved_total{profile="upscale-720p"}') == 0  # a negative saving adds 0
    finally:
        cluster.stop()


def _all_completed(cluster, clips) -> dict | None:
    jobs = {name: cluster.job(name) for name in clips}
    bad = [job for job in jobs.values() if job["status"] in ("failed", "cancelled")]
    assert not bad, bad
    return jobs if all(job["status"] == "completed" for job in jobs.values()) else None


def _sample(metrics: str, series: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(series + " "))
    return float(line.split()[-1])
