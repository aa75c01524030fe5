"""The watch folder: a complete file in the inbox becomes one job, even across a restart."""

import dataclasses
import os

import pytest
import requests

from master.config import WatchConfig
from tests.fixtures import ThreadedMaster, master_config, wait_for

pytestmark = pytest.mark.integration


def watching(tmp_path, stable_seconds=0.5, **watch):
    config = master_config(tmp_path)
    return dataclasses.replace(config, watch=WatchConfig(inbox="inbox", stable_seconds=stable_seconds, interval=0.1,
                                                         **watch))


def jobs(master):
    return requests.get(f"{master.url}/api/jobs", timeout=5).json()["jobs"]


def test_a_stable_file_becomes_one_job_and_is_moved_aside(tmp_path):
    # stable_seconds 3: the copy below changes the file every 0.2 s plus an HTTP call, which a loaded machine
    # has been seen to stretch past 0.5 s
    master = ThreadedMaster(watching(tmp_path, stable_seconds=3.0))
    try:
        inbox = master.root / "inbox"
        wait_for(inbox.exists, 5, what="inbox")
        growing = inbox / "movie one.mkv"
        with open(growing, "wb") as f:
            for _ in range(5):  # still being copied in: must not be picked up yet
                f.write(os.urandom(10_000))
                f.flush()
                os.utime(growing)
                assert jobs(master) == []
                import time
                time.sleep(0.2)  # a copy in progress: the file changes more often than stable_seconds
        [job] = wait_for(lambda: jobs(master), 10, what="the job")
        assert job["source_path"] == "watched/movie one.mkv"
        assert job["output_path"] == "converted/movie one.mp4" and job["profile"] == "h264-720p"
        assert job["source_size"] == 50_000 and job["id"].startswith("watch-")
        assert not growing.exists() and (master.root / "watched" / "movie one.mkv").exists()
    finally:
        master.stop()
    # A restart: the moved file is not converted twice. Start-up recovery goes through the moved-aside files in
    # name order, one at a time; an orphan named to sort after it shows when "movie one.mkv" has been handled.
    (master.root / "watched" / "zz-orphan.mkv").write_bytes(b"moved aside, its job never created")
    again = ThreadedMaster(watching(tmp_path, stable_seconds=3.0))
    try:
        wait_for(lambda: len(jobs(again)) > 1, 10, what="start-up recovery to reach the orphan")
        sources = sorted(j["source_path"] for j in jobs(again))
        assert sources == ["watched/movie one.mkv", "watched/zz-orphan.mkv"]
    finally:
        again.stop()


def test_a_crash_between_move_and_job_is_recovered_at_start(tmp_path):
    accepted = tmp_path / "storage" / "watched"
    accepted.mkdir(parents=True)
    (accepted / "orphan.mp4").write_bytes(b"moved, but the master died before creating its job")
    master = ThreadedMaster(watching(tmp_path))
    try:
        [job] = wait_for(lambda: jobs(master), 10, what="the recovered job")
        assert job["source_path"] == "watched/orphan.mp4"
    finally:
        master.stop()


def test_same_name_twice_gets_two_jobs_and_two_outputs(tmp_path):
    master = ThreadedMaster(watching(tmp_path))
    try:
        inbox = master.root / "inbox"
        wait_for(inbox.exists, 5, what="inbox")
        (inbox / "clip.mp4").write_bytes(b"first")
        wait_for(lambda: len(jobs(master)) == 1, 10, what="first job")
        (inbox / "clip.mp4").write_bytes(b"second")
        wait_for(lambda: len(jobs(master)) == 2, 10, what="second job")
        sources = sorted(j["source_path"] for j in jobs(master))
        outputs = {j["output_path"] for j in jobs(master)}
        assert sources == ["watched/clip-1.mp4", "watched/clip.mp4"] and len(outputs) == 2
    finally:
        master.stop()


def test_watch_profile_must_be_known(tmp_path):
    from converter_common.config_loader import ConfigError
    from master.config import load_config

    path = tmp_path / "m.yaml"
    path.write_text("watch: {inbox: inbox, profile: nope}\n")
    with pytest.raises(ConfigError, match="watch.profile"):
        load_config(path)
