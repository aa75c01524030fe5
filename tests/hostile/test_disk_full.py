"""Disk full: 507 ``insufficient_storage``, never a 5xx of another kind, and nothing left behind.

Two ways: a declared length larger than the free space (refused before the body, with an upload
limit raised above the free space so that the free-space check is the one that answers), and a
write that fails with ENOSPC half-way (the master's writer is swapped for one whose disk fills up
after 100 KB, through ``start_master(receive_writer=...)``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import os

import pytest

from converter_common.background_file_writer import BatchWriter
from master.app import start_master
from tests.fixtures import ThreadedMaster, master_config
from tests.hostile.conftest import SOURCE, claim, submit
from tests.hostile.support import (PROMPT, check_refusal, check_unchanged, exchange, multipart, request_head,
                                   snapshot)

pytestmark = pytest.mark.integration

BUDGET = 100_000  # bytes the "disk" takes before it is full
DATA = os.urandom(400_000)


class FullDiskWriter(BatchWriter):
    """Writes like BatchWriter until BUDGET bytes, then fails as a full disk does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._room = BUDGET

    def _write_all(self, view: memoryview) -> None:
        if len(view) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(view)
        super()._write_all(view)


class FullDiskMaster(ThreadedMaster):
    def _serve(self, started) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._running = start_master(self.config, self.store, tokens=self.tokens, receive_writer=FullDiskWriter)

        self._loop.run_until_complete(start())
        started.set()
        self._loop.run_forever()
        self._running.stop()


def _prepare(running):
    path = running.root / SOURCE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(50_000))
    submit(running, "p1")
    assert claim(running)["id"] == "p1"
    return running


@pytest.fixture
def full(tmp_path):
    config = master_config(tmp_path, lease_seconds=600.0, max_claim_wait=0.5)
    running = _prepare(FullDiskMaster(config))
    yield running
    running.stop()


@pytest.fixture
def roomy_limit(tmp_path):
    """A master whose upload limit (1 PiB) is above this disk's free space."""
    config = master_config(tmp_path, lease_seconds=600.0, max_claim_wait=0.5)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, max_upload_size=1 << 50))
    running = _prepare(ThreadedMaster(config))
    yield running
    running.stop()


def _tus_create(master, length: int, metadata: str):
    return exchange(master.url, request_head("POST", "/api/uploads", {
        "Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Upload-Metadata": metadata, "Content-Length": "0"}))


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.mark.parametrize("target", ["upload-video", "submit-multipart", "tus-create-output", "tus-create-source"])
def test_declared_past_free_space_is_507_at_once(roomy_limit, target):
    master = roomy_limit
    st = os.statvfs(master.root)
    past = st.f_bavail * st.f_frsize * 2
    before = snapshot(master)
    body, content_type = multipart([("profile", None, b"h264-720p"), ("video", "a.mp4", b"x" * 100)])
    if target == "upload-video":
        answer = exchange(master.url, request_head("POST", "/api/worker/upload-video?job_id=p1", {
            "Content-Type": content_type, "Content-Length": str(past)}), [body[:100]], timeout=PROMPT)
    elif target == "submit-multipart":
        answer = exchange(master.url, request_head("POST", "/api/jobs", {
            "Content-Type": content_type, "Content-Length": str(past)}), [body[:100]], timeout=PROMPT)
    elif target == "tus-create-output":
        answer = _tus_create(master, past, f"job_id {b64(b'p1')}")
    else:
        answer = _tus_create(master, past, f"profile {b64(b'h264-720p')},filename {b64(b'a.mp4')}")
    check_refusal(answer, 507, "insufficient_storage")
    check_unchanged(master, before)


@pytest.mark.parametrize("target", ["upload-video", "submit-multipart"])
def test_disk_filling_during_a_multipart_upload_is_507(full, target):
    before = snapshot(full)
    fields = [("profile", None, b"h264-720p")] if target == "submit-multipart" else []
    body, content_type = multipart(fields + [("video", "a.mp4", DATA)])
    path = "/api/jobs" if target == "submit-multipart" else "/api/worker/upload-video?job_id=p1"
    answer = exchange(full.url, request_head("POST", path, {"Content-Type": content_type,
                                                             "Content-Length": str(len(body))}), [body])
    check_refusal(answer, 507, "insufficient_storage")
    check_unchanged(full, before, settle=True)


def test_disk_filling_during_a_tus_patch_is_507_and_the_offset_stays(full):
    created = _tus_create(full, len(DATA), f"job_id {b64(b'p1')}")
    assert created.status == 201, created.describe()
    location = created.headers["location"]
    before = snapshot(full)
    answer = exchange(full.url, request_head("PATCH", location, {
        "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(len(DATA))}), [DATA])
    check_refusal(answer, 507, "insufficient_storage")
    check_unchanged(full, before, settle=True, ignore_mtime=True)
