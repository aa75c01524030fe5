"""``Worker.run_once`` in-process: the real master in a thread and the real client; only FFmpeg is faked.

The fake is the converter the worker is built with (``converter_factory``): it writes an output, raises what
FFmpeg's runner raises, or waits for the worker's abort as FFmpeg's watchdog does. Each test takes one claimed
job to one outcome and checks both sides: what the master recorded and what the worker counted.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import pytest
import requests
from prometheus_client import CollectorRegistry

from tests.fixtures import ThreadedMaster, master_config, wait_for, worker_config
from worker import ffmpeg
from worker.capabilities import Capabilities
from worker.conversion import ConversionResult, Converter
from worker.errors import Shutdown
from worker.metrics import OUTCOMES, WorkerMetrics
from worker.storage_modes import storage_mode
from worker.worker import Worker

SOURCE = b"source bytes: the master does not look inside, and the fake FFmpeg only copies them" * 100
OUTPUT = b"converted output"

Stub = Callable[[Path, Path, threading.Event], None]


class StubConverter(Converter):
    """The real Converter (capabilities, announcements) with FFmpeg replaced by ``stub(source, output, cancel)``."""

    def __init__(self, stub: Stub, settings, metrics: WorkerMetrics):
        super().__init__(settings, Capabilities(ffmpeg="stub-ffmpeg", encoders=frozenset({"libx264"})), metrics)
        self.stub = stub
        self.calls = 0

    def convert(self, profile, source, output, cancel, on_progress=None, label="", slot=0):
        self.calls += 1
        self.stub(source, output, cancel)
        return ConversionResult("cpu", "libx264", seconds=0.5, media_seconds=1.0)


def writes_output(source: Path, output: Path, cancel: threading.Event) -> None:
    assert source.read_bytes() == SOURCE  # downloaded by the real client
    output.write_bytes(OUTPUT)


def waits_for_abort(cancel: threading.Event) -> None:
    """What ``ffmpeg.run`` does when the worker aborts the job: its watchdog kills FFmpeg, it raises Shutdown."""
    wait_for(cancel.is_set, 5, what="the worker to abort the conversion")
    raise Shutdown("conversion interrupted")


@pytest.fixture
def master(tmp_path):
    master = ThreadedMaster(master_config(tmp_path, max_attempts=3))
    (master.root / "in").mkdir(parents=True)
    (master.root / "in" / "clip.mp4").write_bytes(SOURCE)
    assert master.submit("in/clip.mp4", "out/clip.mp4", job_id="job1").status_code == 201
    yield master
    master.stop()


def make_worker(tmp_path, master: ThreadedMaster, stub: Stub, clock=None,
                **worker_settings) -> tuple[Worker, StubConverter]:
    """A registered worker built from its parts: the real client and storage mode, the stub converter."""
    config = worker_config(tmp_path, master.url, **{"claim_wait": 0.2, "heartbeat_interval": 0.1, **worker_settings})
    client = master.client("w1")
    metrics = WorkerMetrics(CollectorRegistry())
    converter = StubConverter(stub, config.ffmpeg, metrics)
    worker = Worker(config, client, storage=storage_mode(config, client),
                    converter_factory=lambda _cancel: converter, metrics=metrics, clock=clock)
    worker.cache.mkdir(parents=True)
    worker.register()
    return worker, converter


def outcomes(worker: Worker) -> dict[str, float]:
    """The worker's ``jobs_finished`` counters that moved."""
    values = {o: worker.metrics.registry.get_sample_value("converter_worker_jobs_finished_total", {"outcome": o})
              for o in OUTCOMES}
    return {outcome: value for outcome, value in values.items() if value}


def worker_record(master: ThreadedMaster, worker_id: str = "w1") -> dict:
    workers = requests.get(f"{master.url}/api/workers", timeout=10).json()["workers"]
    return next(w for w in workers if w["id"] == worker_id)


def assert_cleaned_up(worker: Worker) -> None:
    assert not list(worker.cache.glob("job_*"))
    assert worker.status_line().endswith("idle")


def test_no_job_within_the_claim_wait(tmp_path, master):
    master.claim("someone-else")  # the only job is taken
    worker, converter = make_worker(tmp_path, master, writes_output)
    assert worker.run_once() is False
    assert converter.calls == 0 and outcomes(worker) == {}


def test_completed_job_is_delivered(tmp_path, master):
    worker, converter = make_worker(tmp_path, master, writes_output)
    assert worker.run_once() is True
    job = master.job("job1")
    assert job["status"] == "completed", job
    assert (master.root / "out" / "clip.mp4").read_bytes() == OUTPUT
    assert job["accel"] == "cpu" and job["conversion_seconds"] == 0.5  # the figures the worker recorded
    assert outcomes(worker) == {"completed": 1}
    assert_cleaned_up(worker)


def test_retryable_failure_puts_the_job_back_and_blames_the_worker(tmp_path, master):
    def host_failure(source, output, cancel):
        raise ffmpeg.FfmpegHostFailure("ffmpeg failed: No space left on device")

    worker, _ = make_worker(tmp_path, master, host_failure)
    assert worker.run_once() is True
    job = master.job("job1")
    assert job["status"] == "pending" and job["attempts"] == 1, job
    assert "No space left on device" in job["error"]
    assert worker_record(master)["consecutive_failures"] == 1  # cause: worker
    assert not (master.root / "out" / "clip.mp4").exists()
    assert outcomes(worker) == {"retried": 1}
    assert_cleaned_up(worker)


def test_an_unexpected_error_is_a_retryable_failure_of_the_worker(tmp_path, master):
    def bug(source, output, cancel):
        raise KeyError("oops")

    worker, _ = make_worker(tmp_path, master, bug)
    assert worker.run_once() is True
    job = master.job("job1")
    assert job["status"] == "pending" and "worker error: KeyError" in job["error"], job
    assert worker_record(master)["consecutive_failures"] == 1
    assert outcomes(worker) == {"retried": 1}


def test_fatal_failure_fails_the_job_and_blames_the_source(tmp_path, master):
    def rejects_input(source, output, cancel):
        raise ffmpeg.FfmpegRejectedInput("ffmpeg failed: in.mp4: Invalid data found when processing input")

    worker, _ = make_worker(tmp_path, master, rejects_input)
    assert worker.run_once() is True
    job = master.job("job1")
    assert job["status"] == "failed" and "Invalid data found" in job["error"], job
    assert worker_record(master)["consecutive_failures"] == 0  # cause: source; the worker is not to blame
    assert outcomes(worker) == {"failed": 1}
    assert_cleaned_up(worker)


def test_retryable_failure_of_the_last_attempt_fails_the_job(tmp_path):
    master = ThreadedMaster(master_config(tmp_path, max_attempts=1))
    try:
        (master.root / "in").mkdir(parents=True)
        (master.root / "in" / "clip.mp4").write_bytes(SOURCE)
        assert master.submit("in/clip.mp4", "out/clip.mp4", job_id="job1").status_code == 201

        def stalls(source, output, cancel):
            raise ffmpeg.FfmpegStalled("ffmpeg made no progress for 60 s and was killed")

        worker, _ = make_worker(tmp_path, master, stalls)
        assert worker.run_once() is True
        assert master.job("job1")["status"] == "failed"
        assert outcomes(worker) == {"failed": 1}
    finally:
        master.stop()


def cancel(master: ThreadedMaster, job_id: str) -> None:
    assert requests.post(f"{master.url}/api/jobs/{job_id}/cancel", timeout=10).ok


def re_lease(master: ThreadedMaster, job_id: str) -> None:
    cancel(master, job_id)
    assert requests.post(f"{master.url}/api/jobs/{job_id}/retry", timeout=10).ok
    assert master.claim("w2")["id"] == job_id


@pytest.mark.parametrize("take_away", [cancel, re_lease], ids=["cancelled", "re-leased"])
def test_lost_lease_mid_conversion_drops_the_job(tmp_path, master, take_away):
    """A heartbeat is refused: the worker aborts FFmpeg and drops the job without a word to the master."""
    def loses_the_job(source, output, cancel_event):
        take_away(master, "job1")
        output.write_bytes(OUTPUT)
        waits_for_abort(cancel_event)

    worker, _ = make_worker(tmp_path, master, loses_the_job)
    assert worker.run_once() is True
    job = master.job("job1")
    expected = {"status": "cancelled"} if take_away is cancel else {"status": "processing", "worker_id": "w2"}
    assert {key: job[key] for key in expected} == expected, job
    assert job["error"] is None  # nothing reported
    assert not (master.root / "out" / "clip.mp4").exists()  # nothing uploaded
    assert outcomes(worker) == {"lost": 1}
    assert_cleaned_up(worker)


@pytest.mark.parametrize("take_away", [cancel, re_lease], ids=["cancelled", "re-leased"])
def test_lost_lease_found_at_upload_drops_the_job(tmp_path, master, take_away):
    """FFmpeg finished before a heartbeat noticed: the master refuses the conversion figures or the upload."""
    def finishes_after_losing_the_job(source, output, cancel_event):
        take_away(master, "job1")
        output.write_bytes(OUTPUT)

    worker, _ = make_worker(tmp_path, master, finishes_after_losing_the_job, heartbeat_interval=60.0)
    assert worker.run_once() is True
    assert master.job("job1")["status"] in ("cancelled", "processing")
    assert not (master.root / "out" / "clip.mp4").exists()
    assert outcomes(worker) == {"lost": 1}
    assert_cleaned_up(worker)


def test_shutdown_mid_job_releases_it_without_counting_the_attempt(tmp_path, master):
    worker: Worker | None = None

    def stopped_meanwhile(source, output, cancel_event):
        worker.stop()  # SIGTERM: no drain time, so running jobs are aborted at once
        waits_for_abort(cancel_event)

    worker, _ = make_worker(tmp_path, master, stopped_meanwhile)
    assert worker.run_once() is True
    job = master.job("job1")
    assert job["status"] == "pending" and job["attempts"] == 0, job  # given back, the attempt not counted
    assert job["error"] == "worker shutting down"
    assert worker_record(master)["consecutive_failures"] == 0
    assert not (master.root / "out" / "clip.mp4").exists()
    assert outcomes(worker) == {"released": 1}
    assert worker.stopping and worker.status_line() == "stopping; idle"
    assert not list(worker.cache.glob("job_*"))


class ManualClock:
    """Runs delayed calls only when the test says so (the drain deadline)."""

    def __init__(self):
        self.later: list[tuple[float, Callable[[], None]]] = []

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(min(seconds, 0.1))

    def call_later(self, seconds: float, action: Callable[[], None]) -> None:
        self.later.append((seconds, action))


def drained_worker(tmp_path, master, stub) -> Worker:
    worker, _ = make_worker(tmp_path, master, stub, clock=ManualClock(), drain_timeout=600.0)
    return worker


def test_a_job_that_finishes_within_the_drain_time_is_delivered(tmp_path, master):
    def stopped_but_finishes(source, output, cancel_event):
        worker.stop()
        assert not cancel_event.is_set()  # draining: the job may finish
        output.write_bytes(OUTPUT)

    worker = drained_worker(tmp_path, master, stopped_but_finishes)
    assert worker.run_once() is True
    assert [seconds for seconds, _ in worker.clock.later] == [600.0]  # the drain deadline, not yet reached
    assert master.job("job1")["status"] == "completed"
    assert outcomes(worker) == {"completed": 1}


def test_a_job_still_running_at_the_drain_deadline_is_released(tmp_path, master):
    def outlasts_the_drain(source, output, cancel_event):
        worker.stop()
        [(_, deadline)] = worker.clock.later
        deadline()  # the drain time is up
        waits_for_abort(cancel_event)

    worker = drained_worker(tmp_path, master, outlasts_the_drain)
    assert worker.run_once() is True
    job = master.job("job1")
    assert job["status"] == "pending" and job["attempts"] == 0, job
    assert outcomes(worker) == {"released": 1}


def test_a_vulkan_shutdown_is_announced_by_registering_again(tmp_path, master):
    def vulkan_gives_up(source, output, cancel_event):
        for _ in range(converter.settings.vulkan_max_failures):  # Vulkan runs that the CPU reran fine
            converter._vulkan_outcome("VK_ERROR_DEVICE_LOST")
        output.write_bytes(OUTPUT)

    worker, converter = make_worker(tmp_path, master, vulkan_gives_up)
    assert worker_record(master)["capabilities"]["vulkan"]["disabled"] is None
    assert worker.run_once() is True
    assert worker_record(master)["capabilities"]["vulkan"]["disabled"].endswith("last: VK_ERROR_DEVICE_LOST")
    assert master.job("job1")["status"] == "completed"


def test_the_converter_is_made_once_on_first_use(tmp_path, master):
    made: list[threading.Event] = []
    config = worker_config(tmp_path, master.url)
    client = master.client("w1")

    def factory(cancel: threading.Event) -> Converter:
        made.append(cancel)
        return StubConverter(writes_output, config.ffmpeg, WorkerMetrics(CollectorRegistry()))

    worker = Worker(config, client, storage=storage_mode(config, client), converter_factory=factory)
    assert made == []  # nothing probed before the first registration
    worker.register()
    worker.register()
    assert worker.converter() is worker.converter() and len(made) == 1
    assert not made[0].is_set()
    worker.stop()
    assert made[0].is_set()  # a probe still running at shutdown is cut short
