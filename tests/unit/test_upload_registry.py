"""master/uploads.py: one tus upload's life (creation, one PATCH at a time, slots, expiry, start-up cleanup)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time

import pytest

from master.errors import ApiError
from master.uploads import TUS_KIND, MULTIPART_KIND, UploadRegistry, temp_file_name
from tests.fixtures import master_config



@pytest.fixture
def registry(tmp_path, store):
    config = master_config(tmp_path)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, max_concurrent_uploads=2))
    config.storage.root.mkdir(parents=True)
    return UploadRegistry(config, store)


def leased_job(store, job_id="j1"):
    store.create_job(job_id=job_id, source_path="in/a.mp4", output_path=f"out/{job_id}.mp4", profile="h264-720p",
                     source_size=1, source_sha256="00" * 32, source_mtime_ns=1, max_attempts=3)
    return store.claim_next("w1", 30)


def output_upload(registry, store, length=10):
    directory = registry.root / "out"
    directory.mkdir(exist_ok=True)
    return registry.create_for_output(leased_job(store), worker_id="w1", length=length, directory=directory,
                                      sha256=None)


def test_slots_are_counted_and_refused_past_the_limit(registry):
    registry.take_slot()
    registry.take_slot()
    with pytest.raises(ApiError) as refused:
        registry.take_slot()
    assert (refused.value.status, refused.value.code) == (503, "too_many_uploads")
    registry.release_slot()
    registry.take_slot()


def test_creation_makes_the_row_and_an_empty_file_under_the_one_naming_scheme(registry, store):
    upload = output_upload(registry, store)
    path = registry.temp_path(upload)
    assert path.name == temp_file_name(TUS_KIND, upload.id) and path.stat().st_size == 0
    assert store.get_upload(upload.id).length == 10


def test_a_source_upload_for_an_existing_job_id_is_a_duplicate_job(registry, store):
    leased_job(store, "taken")
    with pytest.raises(ApiError) as refused:
        registry.create_for_source(job_id="taken", length=5, profile="h264-720p", output_path=None, filename="a.mkv",
                                   sha256=None, directory=registry.root)
    assert refused.value.code == "duplicate_job"


def test_one_patch_at_a_time(registry, store):
    upload = output_upload(registry, store)
    registry.begin_receiving(upload.id)
    assert registry.is_busy(upload.id)
    with pytest.raises(ApiError) as refused:
        registry.begin_receiving(upload.id)
    assert (refused.value.status, refused.value.code) == (409, "upload_busy")
    registry.end_receiving(upload.id)
    assert not registry.is_busy(upload.id)


def test_a_settling_patch_is_waited_for_then_forgotten(registry, store):
    upload = output_upload(registry, store)

    async def scenario():
        settling = asyncio.get_running_loop().create_future()
        registry.settle(upload.id, settling)
        asyncio.get_running_loop().call_later(0.01, settling.set_result, 4)
        assert await registry.wait_settled(upload.id)
        await asyncio.sleep(0)
        return registry.is_busy(upload.id)

    assert asyncio.run(scenario()) is False


def test_the_running_hash_is_kept_or_rebuilt_from_the_file(registry, store):
    upload = output_upload(registry, store)
    registry.temp_path(upload).write_bytes(b"abcd")
    hasher = hashlib.sha256(b"abcd")
    registry.record_offset(upload, 4, hasher)
    moved = store.get_upload(upload.id)
    assert asyncio.run(registry.resume_hash(moved)) is hasher
    fresh = UploadRegistry(registry.config, store)  # a restarted master
    assert asyncio.run(fresh.resume_hash(moved)).digest() == hasher.digest()


def test_forget_removes_row_and_file(registry, store):
    upload = output_upload(registry, store)
    registry.forget(upload)
    assert store.list_uploads() == [] and not registry.temp_path(upload).exists()


def test_expired_uploads_are_removed(registry, store):
    upload = output_upload(registry, store)
    store.set_upload_offset(upload.id, 0, expires_at=time.time() - 1)
    assert [u.id for u in registry.remove_expired()] == [upload.id]
    assert not registry.temp_path(upload).exists()


def test_start_up_cleanup_keeps_live_uploads_and_removes_every_stray_temp_file(registry, store):
    live = output_upload(registry, store)
    registry.temp_path(live).write_bytes(b"abc")  # written before a crash, offset never recorded
    multipart = registry.root / "out" / temp_file_name(MULTIPART_KIND, "x")
    stray_tus = registry.root / temp_file_name(TUS_KIND, "f" * 32)
    multipart.write_bytes(b"half a body")
    stray_tus.write_bytes(b"nobody's")
    assert registry.clean_at_start() == 2
    assert not multipart.exists() and not stray_tus.exists()
    assert store.get_upload(live.id).offset == 3


def test_start_up_cleanup_drops_uploads_of_jobs_no_longer_processing(registry, store):
    upload = output_upload(registry, store)
    store.cancel(upload.job_id)
    registry.clean_at_start()
    assert store.list_uploads() == [] and not registry.temp_path(upload).exists()
