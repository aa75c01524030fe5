"""Every error case of the HTTP API, against a real master on a loopback port."""

import dataclasses
import hashlib
import json
import os
import subprocess

import pytest
import requests

from master.config import DatabaseConfig
from tests.fixtures import ThreadedMaster, master_config, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def master(request, tmp_path):
    """The master on each queue backend: every API case holds on SQLite and on PostgreSQL."""
    config = master_config(tmp_path)
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").new_database()
        config = dataclasses.replace(config, database=DatabaseConfig(url=url))
    running = ThreadedMaster(config)
    yield running
    running.stop()


@pytest.fixture
def source(master):
    path = master.root / "in" / "movie.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(300_000))
    return "in/movie.mp4"


def api_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"]
    return body


class TestSubmit:
    def test_created_job_is_pending_with_location(self, master, source):
        response = master.submit(source, "out/movie.mp4", job_id="abc123")
        assert response.status_code == 201
        assert response.headers["Location"] == "/api/jobs/abc123"
        assert response.json()["status"] == "pending" and response.json()["source_size"] == 300_000

    def test_generated_id_when_none_given(self, master, source):
        assert master.submit(source, "out/movie.mp4").json()["id"]

    def test_duplicate_id_is_409(self, master, source):
        master.submit(source, "out/a.mp4", job_id="dup")
        api_error(master.submit(source, "out/b.mp4", job_id="dup"), 409, "duplicate_job")

    @pytest.mark.parametrize("src, out, code", [
        ("/etc/passwd", "out/x.mp4", "invalid_path"),
        ("../../etc/passwd", "out/x.mp4", "invalid_path"),
        ("in/movie.mp4", "../escape.mp4", "invalid_path"),
        ("in/missing.mp4", "out/x.mp4", "source_not_found"),
        ("in/movie.mp4", "out/x.exe", "invalid_path"),
        ("in/movie.mp4", "in/movie.mp4", "invalid_path"),
    ])
    def test_bad_paths_are_400(self, master, source, src, out, code):
        api_error(master.submit(src, out), 400, code)

    def test_symlink_escape_is_refused(self, master, source, tmp_path):
        (tmp_path / "outside.mp4").write_bytes(b"secret")
        (master.root / "in" / "link.mp4").symlink_to(tmp_path / "outside.mp4")
        body = api_error(master.submit("in/link.mp4", "out/x.mp4"), 400, "invalid_path")
        assert str(tmp_path) not in body["message"]

    def test_unknown_profile_is_400(self, master, source):
        api_error(master.submit(source, "out/x.mp4", profile="nope"), 400, "unknown_profile")

    def test_bad_id_is_400(self, master, source):
        api_error(master.submit(source, "out/x.mp4", job_id="../../x"), 400, "invalid_job_id")

    def test_existing_output_is_409(self, master, source):
        (master.root / "out").mkdir()
        (master.root / "out" / "there.mp4").write_bytes(b"keep me")
        api_error(master.submit(source, "out/there.mp4"), 409, "output_exists")
        assert (master.root / "out" / "there.mp4").read_bytes() == b"keep me"

    def test_invalid_json_and_unknown_fields(self, master, source):
        api_error(requests.post(f"{master.url}/api/jobs", data=b"{nope", timeout=5), 400, "invalid_json")
        api_error(requests.post(f"{master.url}/api/jobs", json=[1], timeout=5), 400, "invalid_json")
        api_error(requests.post(f"{master.url}/api/jobs", json={"source_path": source, "output_path": "o.mp4",
                                                                "profile": "h264-720p", "args": "-rm"}, timeout=5),
                  400, "unknown_field")


class TestList:
    def test_filter_and_pagination(self, master, source):
        for i in range(5):
            master.submit(source, f"out/{i}.mp4", job_id=f"j{i}")
        master.claim()
        page = requests.get(f"{master.url}/api/jobs?status=pending&limit=2&offset=1", timeout=5).json()
        assert page["total"] == 4 and [j["id"] for j in page["jobs"]] == ["j2", "j3"]

    @pytest.mark.parametrize("query", ["status=weird", "limit=0", "limit=x", "offset=-1"])
    def test_bad_parameters_are_400(self, master, query):
        assert requests.get(f"{master.url}/api/jobs?{query}", timeout=5).status_code == 400

    def test_unknown_job_is_404(self, master):
        api_error(requests.get(f"{master.url}/api/jobs/nope", timeout=5), 404, "job_not_found")


class TestCancelRetry:
    def test_cancel_pending_then_retry(self, master, source):
        master.submit(source, "out/a.mp4", job_id="c1")
        assert requests.post(f"{master.url}/api/jobs/c1/cancel", timeout=5).json()["status"] == "cancelled"
        api_error(requests.post(f"{master.url}/api/jobs/c1/cancel", timeout=5), 409, "invalid_job_state")
        assert requests.post(f"{master.url}/api/jobs/c1/retry", timeout=5).json()["status"] == "pending"

    def test_retry_of_pending_job_is_409(self, master, source):
        master.submit(source, "out/a.mp4", job_id="r1")
        api_error(requests.post(f"{master.url}/api/jobs/r1/retry", timeout=5), 409, "invalid_job_state")

    def test_cancel_unknown_is_404(self, master):
        api_error(requests.post(f"{master.url}/api/jobs/zzz/cancel", timeout=5), 404, "job_not_found")


class TestWorkerProtocol:
    def test_register_and_list_workers(self, master):
        response = requests.post(f"{master.url}/api/worker/register", json={
            "worker_id": "w1", "hostname": "box", "capabilities": {"accel": ["cpu"]}, "concurrency": 2}, timeout=5)
        assert response.status_code == 200 and response.json()["lease_seconds"] == 5.0
        [worker] = requests.get(f"{master.url}/api/workers", timeout=5).json()["workers"]
        assert (worker["id"], worker["online"], worker["capabilities"]) == ("w1", True, {"accel": ["cpu"]})

    def test_claim_with_nothing_pending_is_204(self, master):
        assert requests.post(f"{master.url}/api/worker/claim", json={"worker_id": "w1"}, timeout=5).status_code == 204

    def test_long_poll_claim_wakes_on_submit(self, master, source, monkeypatch):
        import threading
        import time

        signal = master.wakeup
        parked, woken = threading.Event(), []
        original_wait = signal.wait

        async def watched_wait(seconds):  # runs on the master's IOLoop
            parked.set()
            started = time.monotonic()
            await original_wait(seconds)  # returns when signalled, or after ``seconds`` (the periodic re-check)
            if time.monotonic() - started < seconds - 0.01:
                woken.append(time.monotonic())

        monkeypatch.setattr(signal, "wait", watched_wait)
        result = {}

        def claim():
            r = requests.post(f"{master.url}/api/worker/claim", json={"worker_id": "w1", "wait": 4}, timeout=10)
            result.update(status=r.status_code, body=r.json())

        t = threading.Thread(target=claim)
        t.start()
        wait_for(parked.is_set, 10, 0.01, "the claim to be parked in its long poll")
        submitted = time.monotonic()
        master.submit(source, "out/a.mp4", job_id="lp")
        t.join()
        assert result["status"] == 200 and result["body"]["id"] == "lp"
        assert any(at >= submitted for at in woken), "the claim found the job by re-checking, not by being woken"

    def test_bad_worker_id_is_400(self, master):
        api_error(requests.post(f"{master.url}/api/worker/claim", json={"worker_id": "bad id!"}, timeout=5), 400,
                  "invalid_worker_id")

    def test_heartbeat_and_fail_need_the_lease_owner(self, master, source):
        master.submit(source, "out/a.mp4", job_id="h1")
        master.claim("w1")
        url = f"{master.url}/api/worker/heartbeat?job_id=h1"
        assert requests.post(url, json={"worker_id": "w1", "progress": 40}, timeout=5).json()["progress"] == 40
        api_error(requests.post(url, json={"worker_id": "w2"}, timeout=5), 409, "not_lease_owner")
        api_error(requests.post(url, json={"worker_id": "w1", "progress": 400}, timeout=5), 400, "invalid_field")
        fail = requests.post(f"{master.url}/api/worker/fail?job_id=h1",
                             json={"worker_id": "w1", "error": "ffmpeg: invalid data", "retryable": False}, timeout=5)
        assert fail.json()["status"] == "failed" and master.job("h1")["error"] == "ffmpeg: invalid data"

    def test_missing_job_id_is_400(self, master):
        api_error(requests.get(f"{master.url}/api/worker/download-video", timeout=5), 400, "missing_job_id")


class TestDownloadErrors:
    def test_unknown_job_404(self, master):
        api_error(requests.get(f"{master.url}/api/worker/download-video?job_id=abc", timeout=5), 404,
                  "job_not_found")

    def test_pending_job_400(self, master, source):
        master.submit(source, "out/a.mp4", job_id="d1")
        api_error(requests.get(f"{master.url}/api/worker/download-video?job_id=d1", timeout=5), 400,
                  "invalid_job_state")

    def test_missing_source_404(self, master, source):
        master.submit(source, "out/a.mp4", job_id="d2")
        master.claim()
        (master.root / source).unlink()
        api_error(requests.get(f"{master.url}/api/worker/download-video?job_id=d2", timeout=5), 404,
                  "source_not_found")

    def test_other_workers_lease_is_409(self, master, source):
        master.submit(source, "out/a.mp4", job_id="d3")
        master.claim("w1")
        api_error(requests.get(f"{master.url}/api/worker/download-video?job_id=d3", headers={"X-Worker-Id": "w2"},
                               timeout=5), 409, "not_lease_owner")

    def test_non_ascii_file_name_disposition(self, master):
        path = master.root / "in" / "été clip.mkv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data")
        master.submit("in/été clip.mkv", "out/a.mp4", job_id="d4")
        master.claim()
        response = requests.get(f"{master.url}/api/worker/download-video?job_id=d4", timeout=5)
        assert response.headers["Content-Type"] == "video/x-matroska"
        assert "filename*=UTF-8''%C3%A9t%C3%A9%20clip.mkv" in response.headers["Content-Disposition"]


class TestUploadErrors:
    @pytest.fixture
    def processing(self, master, source):
        master.submit(source, "out/deep/dir/result.mp4", job_id="u1")
        master.claim("w1")
        return "u1"

    def leftovers(self, master):
        return [p for p in master.root.rglob("*") if p.name.startswith(".converter-upload-")]

    def upload(self, master, job_id, **kwargs):
        return requests.post(f"{master.url}/api/worker/upload-video?job_id={job_id}", timeout=10, **kwargs)

    def test_unknown_job_404_and_pending_400(self, master, source):
        api_error(self.upload(master, "ghost", files={"video": b"x"}), 404, "job_not_found")
        master.submit(source, "out/p.mp4", job_id="pend")
        api_error(self.upload(master, "pend", files={"video": b"x"}), 400, "invalid_job_state")
        assert not self.leftovers(master) and master.job("pend")["status"] == "pending"

    def test_missing_video_part_400(self, master, processing):
        api_error(self.upload(master, processing, files={"other": b"x"}), 400, "missing_video_part")
        assert not self.leftovers(master) and master.job(processing)["status"] == "processing"

    def test_not_multipart_400(self, master, processing):
        api_error(self.upload(master, processing, data=b"raw"), 400, "invalid_multipart")
        assert not self.leftovers(master)

    def test_malformed_multipart_400(self, master, processing):
        response = self.upload(master, processing, data=b"--zz\r\ngarbage" * 1000,
                               headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert response.status_code == 400
        assert not self.leftovers(master) and master.job(processing)["status"] == "processing"

    def test_success_creates_output_dir_and_completes(self, master, processing):
        response = self.upload(master, processing, files={"video": ("r.mp4", b"converted" * 1000, "video/mp4")})
        assert response.json() == {"job_id": "u1", "status": "completed", "size": 9000,
                                   "sha256": hashlib.sha256(b"converted" * 1000).hexdigest(),
                                   "output_path": "out/deep/dir/result.mp4"}
        assert (master.root / "out/deep/dir/result.mp4").read_bytes() == b"converted" * 1000
        assert master.job(processing)["output_size"] == 9000 and not self.leftovers(master)

    def test_seed_curl_commands_work_verbatim(self, master, processing, tmp_path):
        port = master.url.rsplit(":", 1)[1]
        subprocess.run(["curl", "-sS", "-f", "-O", f"http://localhost:{port}/api/worker/download-video?job_id=u1"],
                       cwd=tmp_path, check=True, timeout=30)
        downloaded = tmp_path / "download-video"  # curl -O names the file after the URL path
        assert downloaded.read_bytes() == (master.root / "in/movie.mp4").read_bytes()
        converted = tmp_path / "converted.mp4"
        converted.write_bytes(b"c" * 12345)
        out = subprocess.run(["curl", "-sS", "-f", "-X", "POST", "-F", f"video=@{converted}",
                              f"http://localhost:{port}/api/worker/upload-video?job_id=u1"],
                             capture_output=True, check=True, timeout=30)
        assert json.loads(out.stdout)["size"] == 12345
