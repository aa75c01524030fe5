"""Data loss found from the outside, as a careless or hostile user would cause it (issue "Nothing lost, part two").

Each case drives a real master over HTTP the way curl would; each failed on the build before the fix.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sqlite3
import time

import pytest
import requests

from master.handlers.file_receiving import output_writer
from master.storage import LocalStorage
from master.store import JobStore
from tests.fixtures import ThreadedMaster, master_config, wait_for

pytestmark = pytest.mark.integration

TUS = {"Tus-Resumable": "1.0.0"}


def upload_output(master, job_id: str, data: bytes, worker_id: str = "tester") -> requests.Response:
    return requests.post(f"{master.url}/api/worker/upload-video", params={"job_id": job_id},
                         files={"video": ("out.mp4", data)}, headers={"X-Worker-Id": worker_id}, timeout=10)


def register(master, worker_id: str) -> None:
    requests.post(f"{master.url}/api/worker/register", json={"worker_id": worker_id}, timeout=10).raise_for_status()


def leftovers(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name.startswith("."))


@pytest.fixture
def source(master):
    (master.root / "src").mkdir()
    (master.root / "src" / "a.mp4").write_bytes(os.urandom(4096))
    return "src/a.mp4"


class TestOneOwnerPerOutput:
    def test_retry_of_an_old_job_cannot_overwrite_a_finished_output(self, master, source):
        assert master.submit(source, "out/x.mp4", job_id="A").status_code == 201
        requests.post(f"{master.url}/api/jobs/A/cancel", timeout=10).raise_for_status()
        assert master.submit(source, "out/x.mp4", job_id="B").status_code == 201
        assert master.claim()["id"] == "B"
        b_bytes = b"B's video" * 100
        assert upload_output(master, "B", b_bytes).status_code == 200

        retry = requests.post(f"{master.url}/api/jobs/A/retry", timeout=10)

        assert retry.status_code == 409 and retry.json()["error"] == "output_exists"
        assert master.job("A")["status"] == "cancelled"
        assert (master.root / "out" / "x.mp4").read_bytes() == b_bytes
        served = requests.get(f"{master.url}/api/jobs/B/output", timeout=10)
        assert served.content == b_bytes and hashlib.sha256(served.content).hexdigest() == master.job("B")[
            "output_sha256"]

    def test_retry_while_another_job_writes_the_output_is_refused(self, master, source):
        master.submit(source, "out/x.mp4", job_id="A")
        requests.post(f"{master.url}/api/jobs/A/cancel", timeout=10).raise_for_status()
        master.submit(source, "out/x.mp4", job_id="B")

        retry = requests.post(f"{master.url}/api/jobs/A/retry", timeout=10)

        assert retry.status_code == 409 and retry.json()["error"] == "output_busy"
        assert master.job("A")["status"] == "cancelled" and master.job("B")["status"] == "pending"

    def test_the_commit_never_replaces_a_file_that_appeared_meanwhile(self, master, source):
        master.submit(source, "out/y.mp4", job_id="C")
        master.claim()
        (master.root / "out").mkdir(exist_ok=True)
        (master.root / "out" / "y.mp4").write_bytes(b"the user's own file")

        answer = upload_output(master, "C", b"converted")

        assert answer.status_code == 409 and answer.json()["error"] == "output_exists"
        assert (master.root / "out" / "y.mp4").read_bytes() == b"the user's own file"
        job = master.job("C")
        assert job["status"] == "failed" and "not overwritten" in job["error"]
        assert leftovers(master.root) == []

    def test_the_store_refuses_a_second_active_owner_whatever_the_caller(self, tmp_path):
        store = JobStore(tmp_path / "db.sqlite")
        fields = dict(source_path="s", profile="h264-720p", source_size=1, source_sha256="0" * 64, source_mtime_ns=0,
                      max_attempts=3)
        store.create_job(job_id="A", output_path="o.mp4", **fields)
        store.cancel("A")
        store.create_job(job_id="B", output_path="o.mp4", **fields)
        with pytest.raises(Exception) as refused:
            store.retry("A")
        assert type(refused.value).__name__ == "OutputBusy"
        assert store.get_job("A").status.value == "cancelled"


class TestOneFilePart:
    @pytest.fixture
    def leased(self, master, source):
        master.submit(source, "out/z.mp4", job_id="L")
        master.claim()
        return "L"

    def test_two_video_parts_are_refused_not_concatenated(self, master, leased):
        files = [("video", ("a.mp4", b"first half")), ("video", ("b.mp4", b"second half"))]
        answer = requests.post(f"{master.url}/api/worker/upload-video", params={"job_id": leased}, files=files,
                               timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "duplicate_part"
        assert master.job(leased)["status"] == "processing"
        assert not (master.root / "out" / "z.mp4").exists() and leftovers(master.root) == []

    def test_a_plain_text_field_named_video_is_not_a_file(self, master, leased):
        answer = requests.post(f"{master.url}/api/worker/upload-video", params={"job_id": leased},
                               files={"video": (None, b"not a file")}, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "not_a_file_part"
        assert master.job(leased)["status"] == "processing" and leftovers(master.root) == []

    def test_a_users_source_upload_with_two_files_creates_no_job(self, master):
        files = [("video", ("a.mp4", b"x" * 100)), ("video", ("b.mp4", b"y" * 100)), ("profile", (None, "h264-720p"))]
        answer = requests.post(f"{master.url}/api/jobs", files=files, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "duplicate_part"
        assert requests.get(f"{master.url}/api/jobs", timeout=10).json()["total"] == 0
        assert [p for p in master.root.rglob("*") if p.is_file()] == []

    def test_a_repeated_text_field_is_refused(self, master):
        files = [("video", ("a.mp4", b"x" * 100)), ("profile", (None, "h264-720p")), ("profile", (None, "vp9"))]
        answer = requests.post(f"{master.url}/api/jobs", files=files, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"] == "duplicate_part"


def create_source_upload(master, job_id: str, length: int, output_path: str | None = None) -> requests.Response:
    metadata = f"profile {base64.b64encode(b'h264-720p').decode()},id {base64.b64encode(job_id.encode()).decode()}"
    if output_path:
        metadata += f",output_path {base64.b64encode(output_path.encode()).decode()}"
    return requests.post(f"{master.url}/api/uploads", headers={**TUS, "Upload-Length": str(length),
                                                                "Upload-Metadata": metadata}, timeout=10)


def patch(master, location: str, offset: int, data: bytes) -> requests.Response:
    return requests.patch(f"{master.url}{location}", data=data, timeout=10, headers={
        **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})


class TestResumableUploadIdentity:
    def test_a_second_upload_with_the_same_job_id_is_refused_and_the_first_keeps_its_bytes(self, master):
        first = create_source_upload(master, "dup", 100)
        assert patch(master, first.headers["Location"], 0, b"x" * 40).status_code == 204

        second = create_source_upload(master, "dup", 100)

        assert second.status_code == 409 and second.json()["error"] == "duplicate_job"
        head = requests.head(f"{master.url}{first.headers['Location']}", headers=TUS, timeout=10)
        assert head.status_code == 200 and head.headers["Upload-Offset"] == "40"

    def test_a_second_upload_to_the_same_output_is_refused_at_creation(self, master):
        assert create_source_upload(master, "one", 100, output_path="out/same.mp4").status_code == 201

        second = create_source_upload(master, "two", 100, output_path="out/same.mp4")

        assert second.status_code == 409 and second.json()["error"] == "output_busy"
        assert len(list((master.root / "incoming").glob("*.part"))) == 1

    def test_a_worker_cannot_start_a_second_upload_of_its_attempt(self, master, source):
        master.submit(source, "out/w.mp4", job_id="W")
        master.claim()
        headers = {**TUS, "Upload-Length": "10", "Upload-Metadata": f"job_id {base64.b64encode(b'W').decode()}"}
        first = requests.post(f"{master.url}/api/uploads", headers=headers, timeout=10)
        assert patch(master, first.headers["Location"], 0, b"12345").status_code == 204

        second = requests.post(f"{master.url}/api/uploads", headers=headers, timeout=10)

        assert second.status_code == 409 and second.json()["error"] == "duplicate_upload"
        assert second.headers["Location"] == first.headers["Location"]


class TestAbandonedUploadsExpire:
    def test_an_upload_nobody_continues_is_removed_and_counted(self, tmp_path):
        master = ThreadedMaster(master_config(tmp_path, upload_expiry=0.5, lease_seconds=0.4))
        try:
            created = create_source_upload(master, "old", 1000)
            assert "Upload-Expires" in created.headers
            assert patch(master, created.headers["Location"], 0, b"x" * 10).status_code == 204
            wait_for(lambda: not list((master.root / "incoming").glob("*.part")), timeout=10, what="expiry")
            head = requests.head(f"{master.url}{created.headers['Location']}", headers=TUS, timeout=10)
            assert head.status_code == 404
            assert master.metrics.uploads_expired.labels("source")._value.get() == 1
        finally:
            master.stop()


class TestJobsSayWhyTheyWait:
    def test_a_job_no_worker_can_hold_says_so(self, master, source):
        master.submit(source, "out/big.mp4", job_id="big")  # 4096 bytes: needs 8 kB of cache
        register(master, "small")
        claim = requests.post(f"{master.url}/api/worker/claim", timeout=10,
                              json={"worker_id": "small", "wait": 0, "cache_free_bytes": 2000})
        assert claim.status_code == 204
        wait_for(lambda: master.job("big")["waiting"], timeout=10, what="a waiting reason")
        assert master.job("big")["waiting"] == "no worker has room: needs 8 kB, largest cache 2 kB"

    def test_a_reclaimed_job_does_not_show_the_previous_attempts_error(self, master, source):
        master.submit(source, "out/e.mp4", job_id="E")
        master.claim("w1")
        requests.post(f"{master.url}/api/worker/fail", params={"job_id": "E"}, timeout=10,
                      json={"worker_id": "w1", "error": "disk on fire", "retryable": True}).raise_for_status()
        assert master.job("E")["error"] == "disk on fire"
        assert master.claim("w2")["error"] is None


class TestFailuresByCause:
    def test_bad_sources_do_not_quarantine_a_healthy_worker(self, tmp_path):
        master = ThreadedMaster(master_config(tmp_path, quarantine_after=2, max_attempts=1))
        try:
            register(master, "w1")
            (master.root / "bad").mkdir()
            for n in range(3):
                (master.root / "bad" / f"{n}.mp4").write_bytes(os.urandom(100))
                master.submit(f"bad/{n}.mp4", f"out/{n}.mp4", job_id=f"bad{n}")
                assert master.claim("w1")["id"] == f"bad{n}"
                requests.post(f"{master.url}/api/worker/fail", params={"job_id": f"bad{n}"}, timeout=10, json={
                    "worker_id": "w1", "error": "Invalid data found", "retryable": False, "cause": "source"
                }).raise_for_status()
            worker = next(w for w in requests.get(f"{master.url}/api/workers", timeout=10).json()["workers"]
                          if w["id"] == "w1")
            assert worker["consecutive_failures"] == 0 and worker["quarantined_until"] < time.time()
        finally:
            master.stop()

    def test_worker_failures_still_quarantine(self, tmp_path):
        master = ThreadedMaster(master_config(tmp_path, quarantine_after=2, max_attempts=1))
        try:
            register(master, "w1")
            (master.root / "s.mp4").write_bytes(b"x")
            for n in range(2):
                master.submit("s.mp4", f"out/{n}.mp4", job_id=f"j{n}")
                master.claim("w1")
                requests.post(f"{master.url}/api/worker/fail", params={"job_id": f"j{n}"}, timeout=10, json={
                    "worker_id": "w1", "error": "ffmpeg killed by SIGSEGV", "retryable": False, "cause": "worker"
                }).raise_for_status()
            master.submit("s.mp4", "out/2.mp4", job_id="j2")
            assert master.claim("w1") is None
        finally:
            master.stop()


class TestMasterRestart:
    def test_live_leases_get_a_grace_period_instead_of_an_immediate_requeue(self, tmp_path):
        config = master_config(tmp_path, lease_seconds=3.0)
        master = ThreadedMaster(config)
        (master.root / "s.mp4").write_bytes(b"x")
        master.submit("s.mp4", "out/g.mp4", job_id="G")
        master.claim("w1")
        master.stop()
        with sqlite3.connect(config.database.path) as db:  # the master was down longer than the lease
            db.execute("UPDATE jobs SET lease_expires_at = ? WHERE id = 'G'", (time.time() - 60,))
        master = ThreadedMaster(config)
        try:
            assert master.store.requeue_expired() == []  # what the reaper's first tick does
            heartbeat = requests.post(f"{master.url}/api/worker/heartbeat", params={"job_id": "G"}, timeout=10,
                                      json={"worker_id": "w1", "progress": 50})
            assert heartbeat.status_code == 200 and master.job("G")["status"] == "processing"
        finally:
            master.stop()

    @pytest.mark.parametrize("resent", ["same bytes", "other bytes"])
    def test_an_output_placed_just_before_the_master_died_completes_its_job_on_the_retry(self, tmp_path, resent):
        """The master renamed the output into place and died before recording the job completed (the state a
        SIGKILL between the two leaves, made by the master's own placing code). The worker's retry of the same
        attempt with the same bytes completes the job with that file; other bytes never replace it."""
        config = master_config(tmp_path)
        master = ThreadedMaster(config)
        try:
            (master.root / "s.mp4").write_bytes(b"x")
            master.submit("s.mp4", "out/p.mp4", job_id="P")
            master.claim("w1")
            output = b"converted" * 1000
            staged = master.root / "out" / ".staged"
            staged.parent.mkdir()
            staged.write_bytes(output)
            asyncio.run(LocalStorage(master.root).place(staged, "out/p.mp4", hashlib.sha256(output).digest(),
                                                        output_writer(master.store.get_job("P"))))
            answer = upload_output(master, "P", output if resent == "same bytes" else b"other" * 1000, "w1")
            if resent == "same bytes":
                assert answer.status_code == 200, answer.text
                assert master.job("P")["status"] == "completed" and master.job("P")["attempts"] == 1
            else:
                assert answer.status_code == 409 and answer.json()["error"] == "output_exists"
            assert (master.root / "out" / "p.mp4").read_bytes() == output
            assert leftovers(master.root) == []
        finally:
            master.stop()


class TestUsersFileNames:
    def test_a_quote_in_a_file_name_is_not_turned_into_its_escape(self, master):
        # curl and browsers send `"` in a form's filename as %22 (WHATWG multipart encoding)
        files = {"video": ('my "best" clip.mp4', b"x" * 100), "profile": (None, "h264-720p")}
        created = requests.post(f"{master.url}/api/jobs", files=files, timeout=10)
        assert created.status_code == 201
        assert created.json()["output_path"] == "converted/my _best_ clip.mp4"
