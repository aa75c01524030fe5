"""``worker.schedule``: windows read from the config, and the worker loop with an injected clock claiming nothing
outside them and telling the master so (the real master in a thread, the real client; FFmpeg replaced by a copy)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import requests
from prometheus_client import CollectorRegistry

from converter_common.config_loader import ConfigError, build
from tests.fixtures import ThreadedMaster, master_config, worker_config
from worker.capabilities import Capabilities
from worker.config import WorkerConfig
from worker.conversion import ConversionResult, Converter
from worker.metrics import WorkerMetrics
from worker.schedule import Schedule, ScheduleError, parse_window
from worker.storage_modes import storage_mode
from worker.worker import Clock, Worker

THURSDAY = dt.datetime(2026, 12, 3)


def at(day_offset: int, clock: str) -> dt.datetime:
    hours, minutes = map(int, clock.split(":"))
    return THURSDAY + dt.timedelta(days=day_offset, hours=hours, minutes=minutes)


class TestWindows:
    schedule = Schedule.parse(["22:00-07:00", "sat,sun 00:00-24:00"])

    @pytest.mark.parametrize("moment, expected", [
        (at(0, "12:00"), False), (at(0, "22:00"), True), (at(1, "06:59"), True), (at(1, "07:00"), False),
        (at(2, "12:00"), True),   # Saturday, all day
        (at(4, "06:59"), True),   # Monday morning: Sunday night's window runs on
        (at(4, "07:00"), False),
    ])
    def test_inside_and_outside(self, moment, expected):
        assert self.schedule.is_open(moment) is expected

    def test_the_next_change_skips_to_where_the_state_differs(self):
        assert self.schedule.next_change(at(0, "12:00")) == at(0, "22:00")
        assert self.schedule.next_change(at(1, "23:00")) == at(4, "07:00")  # Friday night through the weekend
        assert Schedule.parse([]).next_change(at(0, "12:00")) is None
        assert Schedule.parse(["00:00-24:00"]).next_change(at(0, "12:00")) is None

    def test_days_name_the_day_a_window_starts_and_ranges_wrap(self):
        friday_night = Schedule.parse(["fri 22:00-02:00"])
        assert friday_night.is_open(at(2, "01:00")) and not friday_night.is_open(at(3, "01:00"))
        weekend = parse_window("fri-mon 10:00-11:00")
        assert sorted(weekend.days) == [0, 4, 5, 6]

    @pytest.mark.parametrize("text", ["7-9", "25:00-07:00", "10:00-10:00", "24:00-01:00", "xyz 01:00-02:00",
                                      "mon,funday 01:00-02:00", "10:60-11:00"])
    def test_bad_windows_are_refused(self, text):
        with pytest.raises(ScheduleError):
            parse_window(text)

    def test_the_config_names_each_bad_window(self):
        with pytest.raises(ConfigError) as refused:
            build(WorkerConfig, {"worker": {"schedule": ["22:00-07:00", "nightly"]}})
        assert [key for key, _ in refused.value.problems] == ["worker.schedule[1]"]


class SettableClock(Clock):
    """Real waits, cut short, at a local time the test sets."""

    def __init__(self, now: dt.datetime):
        self.moment = now

    def now(self) -> dt.datetime:
        return self.moment

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(min(seconds, 0.05))


class CopyingConverter(Converter):
    def __init__(self, settings, metrics):
        super().__init__(settings, Capabilities(ffmpeg="copy", encoders=frozenset({"libx264"})), metrics)

    def convert(self, profile, source, output, cancel, on_progress=None, label="", slot=0):
        output.write_bytes(source.read_bytes()[:100])
        return ConversionResult("cpu", "libx264", seconds=0.1, media_seconds=1.0)


@pytest.fixture
def master(tmp_path):
    master = ThreadedMaster(master_config(tmp_path))
    (master.root / "in").mkdir(parents=True)
    (master.root / "in" / "clip.mp4").write_bytes(b"source" * 1000)
    assert master.submit("in/clip.mp4", "out/clip.mp4", job_id="night-job").status_code == 201
    yield master
    master.stop()


def test_outside_its_windows_the_worker_claims_nothing_and_says_so(tmp_path, master):
    clock = SettableClock(at(0, "12:00"))
    config = worker_config(tmp_path, master.url, claim_wait=0.2, heartbeat_interval=0.1, schedule=("22:00-07:00",))
    client = master.client("night-owl")
    metrics = WorkerMetrics(CollectorRegistry())
    worker = Worker(config, client, storage=storage_mode(config, client),
                    converter_factory=lambda _cancel: CopyingConverter(config.ffmpeg, metrics), metrics=metrics,
                    clock=clock)
    worker.cache.mkdir(parents=True)
    worker.register()

    assert worker.run_once() is False
    assert master.job("night-job")["status"] == "pending"
    assert metrics.registry.get_sample_value("converter_worker_schedule_open") == 0
    record = _worker_record(master, "night-owl")
    assert record["scheduled_off"] is True and record["schedule"] == {
        "windows": ["22:00-07:00"], "open": False, "next_change": at(0, "22:00").timestamp()}
    scraped = requests.get(f"{master.url}/metrics", timeout=10).text
    assert 'converter_master_workers_not_claiming{reason="scheduled_off"} 1.0' in scraped

    clock.moment = at(0, "23:30")
    assert worker.run_once() is True
    assert master.job("night-job")["status"] == "completed"
    assert metrics.registry.get_sample_value("converter_worker_schedule_open") == 1
    assert _worker_record(master, "night-owl")["scheduled_off"] is False


def _worker_record(master, worker_id: str) -> dict:
    workers = requests.get(f"{master.url}/api/workers", timeout=10).json()["workers"]
    return next(w for w in workers if w["id"] == worker_id)
