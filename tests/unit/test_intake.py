"""master/intake.py: every way a job is created places its source, checks its output once, counts and wakes."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import pytest

from master.errors import ApiError
from master.storage import LocalStorage
from master.intake import INCOMING_DIR, JobIntake
from master.store import JobStore
from tests.fixtures import master_config


class Counter:
    value = 0

    def inc(self) -> None:
        self.value += 1


class Wakeup:
    sent = 0

    def send(self) -> None:
        self.sent += 1


@pytest.fixture
def intake(tmp_path):
    config = master_config(tmp_path)
    config.storage.root.mkdir(parents=True)
    store = JobStore(config.database.path)
    yield JobIntake(config, store, SimpleNamespace(jobs_submitted=Counter()), Wakeup(),
                    LocalStorage(config.storage.root))
    store.close()


def received(intake, data=b"video"):
    path = intake.root / "upload.part"
    path.write_bytes(data)
    return path


def test_a_received_file_is_placed_under_incoming_and_becomes_a_counted_job(intake):
    job = asyncio.run(intake.from_received_file(
        job_id="j1", received=received(intake), client_name="My Movie.MKV", output_path=None, profile="h264-720p",
        sha256=hashlib.sha256(b"video").digest()))
    assert job.source_path.startswith(f"{INCOMING_DIR}/") and job.source_path.endswith(".mkv")
    assert job.output_path == "converted/My Movie.mp4"
    assert intake.metrics.jobs_submitted.value == 1 and intake.wakeup.sent == 1
    assert not (intake.root / "upload.part").exists()


def test_a_taken_default_output_falls_back_to_the_job_id_name(intake):
    (intake.root / "converted").mkdir()
    (intake.root / "converted" / "clip.mp4").write_bytes(b"theirs")
    job = asyncio.run(intake.from_received_file(
        job_id="j2", received=received(intake), client_name="clip.mov", output_path=None, profile="h264-720p",
        sha256=b"\0" * 32))
    assert job.output_path == "converted/clip-j2.mp4"


def test_a_refused_output_leaves_nothing_in_incoming(intake):
    with pytest.raises(ApiError) as refused:
        asyncio.run(intake.from_received_file(
            job_id="j3", received=received(intake), client_name="a.mkv", output_path="out/a.avi",
            profile="h264-720p", sha256=b"\0" * 32))
    assert refused.value.code == "invalid_path"
    assert not (intake.root / INCOMING_DIR).exists() or list((intake.root / INCOMING_DIR).iterdir()) == []
    assert intake.metrics.jobs_submitted.value == 0


def test_a_stored_file_is_hashed(intake):
    received(intake, b"abc")
    job = asyncio.run(intake.from_stored_file(job_id="j4", source="upload.part", outputs=["o.mp4"],
                                              profile="h264-720p"))
    assert job.source_sha256 == hashlib.sha256(b"abc").hexdigest() and job.source_path == "upload.part"
