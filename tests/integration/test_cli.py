"""The real ``converterctl`` (``python -m converterctl``) against a real master, and a worker for the workflow."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fixtures import ffmpeg_available, ffprobe, free_port, wait_for

pytestmark = pytest.mark.integration

# Run from the checkout (PYTHONPATH), so the tests work without the console script installed.
REPO = Path(__file__).resolve().parents[2]


def converterctl(url: str, *args: str, cwd=None, timeout: float = 120, env: dict | None = None):
    return subprocess.run(_command(url, args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=_environment(env))


def start_converterctl(url: str, *args: str, stderr_path: Path) -> subprocess.Popen:
    """converterctl running in the background, its stderr in a file the test can watch."""
    with open(stderr_path, "wb") as stderr:
        return subprocess.Popen(_command(url, args), stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=_environment(None))


def _command(url: str, args) -> list[str]:
    return [sys.executable, "-m", "converterctl", *(["--url", url] if url else []), *args]


def _environment(env: dict | None) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONVERTER_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment.update(env or {})
    return environment


@pytest.fixture(autouse=True)
def upload_state_file(tmp_path, monkeypatch) -> Path:
    """Where converterctl remembers unfinished uploads: under this test's $XDG_CACHE_HOME, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "converterctl" / "uploads.json"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg")
def test_upload_watch_download_gives_the_verified_output(any_cluster, clip_2s, tmp_path):
    cluster = any_cluster
    cluster.add_worker("w1")
    submitted = converterctl(cluster.url, "submit", "--upload", str(clip_2s), "--json", "--no-progress")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["source_path"].startswith("incoming/") and job["output_path"] == "converted/clip.mp4"
    assert job["source_sha256"] == sha256(clip_2s)
    if cluster.bucket is not None:  # sent straight to the bucket: not one body byte through the master
        assert cluster.stored(job["source_path"]) == clip_2s.read_bytes()
        assert "converter_master_bytes_received_total 0.0" in requests.get(f"{cluster.url}/metrics", timeout=10).text

    watched = converterctl(cluster.url, "watch", job["id"], "--interval", "0.2", "--max-time", "120")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "completed" in watched.stdout and "100.0%" in watched.stdout

    downloaded = converterctl(cluster.url, "download", job["id"], "-o", "out.mp4", cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded.stderr
    assert "SHA-256 verified" in downloaded.stdout
    output = tmp_path / "out.mp4"
    assert sha256(output) == cluster.job(job["id"])["output_sha256"]
    assert ffprobe(output)["streams"][0]["height"] == 720
    assert not list(tmp_path.glob("*.part*"))

    # A cut download left half a file and its version: the next run sends only the rest.
    data = output.read_bytes()
    (tmp_path / "again.mp4.part").write_bytes(data[: len(data) // 2])
    etag = f'"sha256-{cluster.job(job["id"])["output_sha256"]}"'
    (tmp_path / "again.mp4.part.etag").write_text(etag)
    resumed = converterctl(cluster.url, "download", job["id"], "-o", "again.mp4", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "again.mp4").read_bytes() == data

    # A part of another version (stale ETag) is replaced by the whole file, never spliced.
    (tmp_path / "third.mp4.part").write_bytes(b"x" * 1000)
    (tmp_path / "third.mp4.part.etag").write_text('"sha256-' + "0" * 64 + '"')
    fresh = converterctl(cluster.url, "download", job["id"], "-o", "third.mp4", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "third.mp4").read_bytes() == data


@pytest.fixture
def stored_source(master):
    path = master.root / "in" / "movie.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(200_000))
    return "in/movie.mp4"


def test_submit_list_show_cancel_retry_in_tables_and_json(master, stored_source):
    created = converterctl(master.url, "submit", stored_source, "-o", "out/movie.mp4", "--id", "job1")
    assert created.returncode == 0, created.stderr
    assert "submitted job job1" in created.stdout

    listed = converterctl(master.url, "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "PROFILE"]
    assert "job1" in listed.stdout and "pending" in listed.stdout

    shown = json.loads(converterctl(master.url, "show", "job1", "--json").stdout)
    assert shown["id"] == "job1" and shown["status"] == "pending"
    assert "status:" in converterctl(master.url, "show", "job1").stdout

    assert "cancelled" in converterctl(master.url, "cancel", "job1").stdout
    assert json.loads(converterctl(master.url, "--json", "retry", "job1").stdout)["status"] == "pending"
    assert json.loads(converterctl(master.url, "list", "--status", "pending", "--json").stdout)["total"] == 1


def test_profiles_and_workers(master):
    profiles = converterctl(master.url, "profiles")
    assert profiles.returncode == 0 and "h264-720p" in profiles.stdout
    assert json.loads(converterctl(master.url, "profiles", "--json").stdout)["profiles"][0]["name"] == "h264-720p"
    master.client("w9").register({}, 1, "box9")
    workers = converterctl(master.url, "workers")
    assert workers.returncode == 0 and "w9" in workers.stdout and "box9" in workers.stdout


def test_url_and_token_come_from_the_environment(master):
    result = converterctl("", "list", "--json", env={"CONVERTER_URL": master.url, "CONVERTER_TOKEN": "t" * 20})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 0


def test_unknown_job_is_an_api_error(master):
    result = converterctl(master.url, "show", "nope")
    assert result.returncode == 3
    assert "no job with id 'nope'" in result.stderr and "job_not_found" in result.stderr
    assert converterctl(master.url, "download", "nope").returncode == 3


def test_cancel_of_a_finished_state_is_an_api_error(master, stored_source):
    converterctl(master.url, "submit", stored_source, "-o", "out/movie.mp4", "--id", "j2")
    converterctl(master.url, "cancel", "j2")
    again = converterctl(master.url, "cancel", "j2")
    assert again.returncode == 3 and "invalid_job_state" in again.stderr


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["list", "--status", "sleeping"],
    ["watch", "--interval", "-1"],
    ["submit"],
    ["submit", "in/movie.mp4"],  # a path in storage needs --output
    [],
])
def test_bad_flags_are_usage_errors(master, args):
    result = converterctl(master.url, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() and "Traceback" not in result.stderr


def test_unreachable_master_is_one_line_and_exit_4():
    result = converterctl(f"http://127.0.0.1:{free_port()}", "list", timeout=30)
    assert result.returncode == 4
    assert result.stderr.strip().count("\n") == 0
    assert "cannot reach the master" in result.stderr and "Connection refused" in result.stderr


def test_watch_gives_up_after_max_time(master, stored_source):
    converterctl(master.url, "submit", stored_source, "-o", "out/movie.mp4", "--id", "slow")
    result = converterctl(master.url, "watch", "slow", "--interval", "0.1", "--max-time", "0.5")
    assert result.returncode == 5 and "slow" in result.stderr


def test_download_of_an_unfinished_job_says_so(master, stored_source):
    converterctl(master.url, "submit", stored_source, "-o", "out/movie.mp4", "--id", "j3")
    result = converterctl(master.url, "download", "j3")
    assert result.returncode == 1 and "pending" in result.stderr


# -- the endpoints converterctl uses, at the HTTP level ---------------------------------------------


def test_a_refused_upload_leaves_nothing_in_incoming(master, tmp_path):
    import requests

    video = tmp_path / "a.mkv"
    video.write_bytes(os.urandom(100_000))
    with open(video, "rb") as f:
        response = requests.post(f"{master.url}/api/jobs", files={"video": f}, data={"profile": "nope"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "unknown_profile"
    assert list((master.root / "incoming").iterdir()) == []
    response = requests.post(f"{master.url}/api/jobs", files={"profile": (None, "h264-720p")}, timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "missing_video_part"


def test_output_endpoint_ranges_and_head(master, stored_source):
    import requests

    master.submit(stored_source, "out/movie.mp4", job_id="r1")
    master.claim()
    data = os.urandom(50_000)
    done = requests.post(f"{master.url}/api/worker/upload-video?job_id=r1", files={"video": ("m.mp4", data)},
                         timeout=10)
    assert done.status_code == 200, done.text
    url = f"{master.url}/api/jobs/r1/output"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data)) and not head.content
    assert head.headers["ETag"] == f'"sha256-{hashlib.sha256(data).hexdigest()}"'
    assert head.headers["Content-Disposition"] == 'attachment; filename="movie.mp4"'
    part = requests.get(url, headers={"Range": "bytes=-100", "If-Range": head.headers["ETag"]}, timeout=10)
    assert part.status_code == 206 and part.content == data[-100:]
    other = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"sha256-0"'}, timeout=10)
    assert other.status_code == 200 and other.content == data
    beyond = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_cut_source_upload_resumes_where_the_master_stopped(master, tmp_path):
    from tests.faults.proxy import Fault, FaultProxy

    source = tmp_path / "big source.mkv"
    source.write_bytes(os.urandom(6_000_000))
    proxy = FaultProxy(int(master.url.rsplit(":", 1)[1]))
    proxy.add(Fault("up", after_bytes=3_000_000))  # the PATCH is cut half-way
    submitted = converterctl(proxy.url, "submit", "--upload", str(source), "--id", "big1", "--json", "--no-progress")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["id"] == "big1" and job["source_size"] == 6_000_000 and job["source_sha256"] == sha256(source)
    assert job["output_path"] == "converted/big source.mp4"
    received = master.metrics.bytes_received._value.get()
    assert proxy.injected == 1 and received < 9_000_000  # the master kept the first part: resumed, not sent twice
    assert (master.root / job["source_path"]).read_bytes() == source.read_bytes()
    assert not list(master.root.rglob(".converter-*"))
    proxy.close()


# -- an upload survives converterctl's death and the master's absence ------------------------------


SOURCE_SIZE = 32_000_000  # more than socket buffers hold, so a killed upload stays unfinished


def remembered_uploads(state_file: Path) -> list[dict]:
    return list(json.loads(state_file.read_text())["uploads"].values()) if state_file.exists() else []


def upload_offset(master_url: str, location: str) -> int | None:
    """The master's offset of a tus upload (None when it no longer has it)."""
    import requests

    response = requests.head(f"{master_url}{location}", headers={"Tus-Resumable": "1.0.0"}, timeout=40)
    return int(response.headers["Upload-Offset"]) if response.status_code == 200 else None


@pytest.fixture
def killed_upload(master, tmp_path, upload_state_file):
    """``submit --upload`` SIGKILLed in the middle of its PATCH, behind a throttled proxy (kept for the next run).

    Gives the source, the proxy and the entry converterctl remembered, once the master has stored
    the bytes that reached it (its offset is past 0).
    """
    from tests.faults.proxy import FaultProxy

    source = tmp_path / "movie.mkv"
    source.write_bytes(os.urandom(SOURCE_SIZE))
    proxy = FaultProxy(int(master.url.rsplit(":", 1)[1]))
    proxy.rate["up"] = 2_000_000  # 16 s for the whole file: it is killed long before the end
    cli = start_converterctl(proxy.url, "submit", "--upload", str(source), "--json", "--no-progress",
                             stderr_path=tmp_path / "killed.err")
    try:
        wait_for(lambda: master.metrics.bytes_received._value.get() >= 1_000_000, timeout=20,
                 what="the first megabyte to reach the master")
    finally:
        cli.kill()
        cli.communicate(timeout=10)
        proxy.rate["up"] = 0  # what the dead process had already written (socket buffers, a few MB) goes through
    assert cli.returncode == -9, "converterctl ended before it was killed"
    entries = remembered_uploads(upload_state_file)
    assert len(entries) == 1, "converterctl did not remember its upload"
    entry = entries[0]
    wait_for(lambda: upload_offset(master.url, entry["location"]), timeout=20, what="the cut PATCH to be stored")
    yield source, proxy, entry
    proxy.close()


def test_a_killed_upload_run_again_sends_only_the_rest_to_the_same_job(master, killed_upload, upload_state_file):
    source, proxy, entry = killed_upload
    offset = upload_offset(master.url, entry["location"])
    assert 0 < offset < SOURCE_SIZE
    received_before = master.metrics.bytes_received._value.get()

    again = converterctl(proxy.url, "submit", "--upload", str(source), "--json", "--no-progress")
    assert again.returncode == 0, again.stderr
    job = json.loads(again.stdout)
    assert job["id"] == entry["job_id"]  # no --id given: the first run's id was remembered
    assert master.metrics.bytes_received._value.get() - received_before == SOURCE_SIZE - offset
    assert job["source_size"] == SOURCE_SIZE and job["source_sha256"] == sha256(source)
    assert (master.root / job["source_path"]).read_bytes() == source.read_bytes()
    assert json.loads(converterctl(master.url, "list", "--json").stdout)["total"] == 1
    assert remembered_uploads(upload_state_file) == []  # done: nothing left to resume


def test_a_killed_upload_whose_upload_the_master_dropped_starts_over_with_the_same_job_id(master, killed_upload):
    import requests

    source, proxy, entry = killed_upload
    dropped = requests.delete(f"{master.url}{entry['location']}", headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert dropped.status_code == 204  # as an expired upload would be: the master answers 404 from now on

    again = converterctl(proxy.url, "submit", "--upload", str(source), "--json", "--no-progress")
    assert again.returncode == 0, again.stderr
    job = json.loads(again.stdout)
    assert job["id"] == entry["job_id"] and job["source_sha256"] == sha256(source)


def test_no_resume_drops_the_remembered_upload_and_starts_a_new_one(master, killed_upload, upload_state_file):
    source, proxy, entry = killed_upload

    fresh = converterctl(proxy.url, "submit", "--upload", str(source), "--no-resume", "--json", "--no-progress")
    assert fresh.returncode == 0, fresh.stderr
    job = json.loads(fresh.stdout)
    assert job["id"] != entry["job_id"] and job["source_sha256"] == sha256(source)
    assert upload_offset(master.url, entry["location"]) is None  # the old upload was terminated
    assert json.loads(converterctl(master.url, "list", "--json").stdout)["total"] == 1
    assert remembered_uploads(upload_state_file) == []


def test_upload_waits_with_backoff_for_a_master_that_comes_up_late(tmp_path):
    from tests.fixtures import ThreadedMaster, master_config

    config = master_config(tmp_path)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=free_port()))
    source = tmp_path / "late.mkv"
    source.write_bytes(os.urandom(500_000))
    stderr_path = tmp_path / "cli.err"
    cli = start_converterctl(f"http://127.0.0.1:{config.server.port}", "submit", "--upload", str(source), "--json",
                             "--no-progress", stderr_path=stderr_path)
    master = None
    try:
        def retries_so_far() -> list[str]:
            assert cli.poll() is None, f"converterctl gave up: {stderr_path.read_text()}"
            return [line for line in stderr_path.read_text().splitlines() if "retrying in" in line]

        wait_for(lambda: len(retries_so_far()) >= 3, timeout=20, what="converterctl to wait for the master 3 times")
        master = ThreadedMaster(config)
        stdout, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0, stderr_path.read_text()
        job = json.loads(stdout)
        assert job["source_sha256"] == sha256(source) and master.job(job["id"])["status"] == "pending"
        notes = [line for line in stderr_path.read_text().splitlines() if "retrying in" in line]
        assert all("cannot reach the master" in line and "Connection refused" in line for line in notes)
        waits = [float(line.split("retrying in ")[1].split(" s")[0]) for line in notes]
        assert waits[:3] == [0.5, 1.0, 2.0]  # doubling: a short outage costs little, a long one few tries
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate(timeout=10)
        if master is not None:
            master.stop()


def test_source_upload_needs_the_admin_token(tmp_path):
    from master.auth import Tokens
    from tests.fixtures import ThreadedMaster, master_config

    secured = ThreadedMaster(master_config(tmp_path), tokens=Tokens(admin="a" * 20, worker="w" * 20))
    try:
        source = tmp_path / "s.mkv"
        source.write_bytes(b"x" * 1000)
        as_worker = converterctl(secured.url, "submit", "--upload", str(source), env={"CONVERTER_TOKEN": "w" * 20})
        assert as_worker.returncode == 3 and "forbidden" in (as_worker.stderr + as_worker.stdout)
        as_admin = converterctl(secured.url, "submit", "--upload", str(source), "--json", "--no-progress",
                                env={"CONVERTER_TOKEN": "a" * 20})
        assert as_admin.returncode == 0, as_admin.stderr
    finally:
        secured.stop()
