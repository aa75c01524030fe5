"""converterctl's priority, queue, worker and stats commands: the real CLI against a real master."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def converterctl(url: str, *args: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONVERTER_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "converterctl", "--url", url, *args], capture_output=True, text=True,
                          timeout=60, env=environment)


@pytest.fixture(autouse=True)
def upload_state_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def stored(master):
    def put(name: str) -> str:
        path = master.root / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(50_000))
        return f"in/{name}"
    return put


def test_priorities_from_submit_and_the_priority_command_order_the_claims(master, stored, tmp_path):
    assert converterctl(master.url, "submit", stored("a.mkv"), "-o", "out/a.mp4", "--id", "a").returncode == 0
    high = converterctl(master.url, "--json", "submit", stored("b.mkv"), "-o", "out/b.mp4", "--id", "b",
                        "--priority", "10")
    assert high.returncode == 0 and json.loads(high.stdout)["priority"] == 10
    upload = tmp_path / "c.mkv"
    upload.write_bytes(os.urandom(30_000))
    uploaded = converterctl(master.url, "--json", "--no-progress", "submit", "--upload", str(upload), "--id", "c",
                            "--priority", "-3")  # the priority travels in the tus metadata
    assert uploaded.returncode == 0, uploaded.stderr
    assert json.loads(uploaded.stdout)["priority"] == -3
    raised = converterctl(master.url, "priority", "a", "20")
    assert raised.returncode == 0 and "priority 20" in raised.stdout
    assert "priority:         20" in converterctl(master.url, "show", "a").stdout
    assert [master.claim()["id"] for _ in range(3)] == ["a", "b", "c"]

    refused = converterctl(master.url, "priority", "a", "5")
    assert refused.returncode == 3 and "job_not_pending" in refused.stderr
    for bad in ("1.5", "x", "1001"):
        assert converterctl(master.url, "priority", "b", bad).returncode == 2
        assert converterctl(master.url, "submit", stored("d.mkv"), "-o", "out/d.mp4", "--priority", bad
                            ).returncode == 2


def test_queue_pause_status_and_resume(master, stored):
    converterctl(master.url, "submit", stored("a.mkv"), "-o", "out/a.mp4", "--id", "a")
    paused = converterctl(master.url, "queue", "pause")
    assert paused.returncode == 0 and paused.stdout.startswith("queue paused since") and "1 pending" in paused.stdout
    assert master.claim() is None
    assert json.loads(converterctl(master.url, "--json", "queue").stdout)["paused"] is True
    resumed = converterctl(master.url, "queue", "resume")
    assert resumed.returncode == 0 and resumed.stdout.startswith("queue running")
    assert master.claim()["id"] == "a"


def test_worker_pause_and_resume(master, stored):
    master.client("box-1").register({}, 1, "host1")
    paused = converterctl(master.url, "worker", "pause", "box-1")
    assert paused.returncode == 0 and "worker box-1 is paused" in paused.stdout
    assert "paused" in converterctl(master.url, "workers").stdout.splitlines()[1].split()
    converterctl(master.url, "submit", stored("a.mkv"), "-o", "out/a.mp4", "--id", "a")
    assert master.claim("box-1") is None
    assert "claiming again" in converterctl(master.url, "worker", "resume", "box-1").stdout
    assert master.claim("box-1")["id"] == "a"
    unknown = converterctl(master.url, "worker", "pause", "ghost")
    assert unknown.returncode == 3 and "worker_not_found" in unknown.stderr


def test_stats_in_a_table_and_in_json(master, stored):
    converterctl(master.url, "submit", stored("a.mkv"), "-o", "out/a.mp4", "--id", "a")
    job = master.claim("box-1")
    master.store.complete_job(job["id"], 20_000, "ab" * 32, worker_id="box-1")  # as an upload would
    table = converterctl(master.url, "stats", "--days", "7")
    assert table.returncode == 0, table.stderr
    assert "h264-720p" in table.stdout and "box-1" in table.stdout and "60.0%" in table.stdout
    data = json.loads(converterctl(master.url, "--json", "stats").stdout)
    assert data["totals"] == {"jobs": 1, "source_bytes": 50_000, "output_bytes": 20_000, "saved_bytes": 30_000}


def test_an_uploaded_source_keeps_its_priority_on_either_backend(any_cluster, tmp_path):
    """tus metadata (local files) or the bucket declaration (``/api/source-uploads``) carries it to the job."""
    upload = tmp_path / "movie.mkv"
    upload.write_bytes(os.urandom(40_000))
    submitted = converterctl(any_cluster.url, "--json", "--no-progress", "submit", "--upload", str(upload),
                             "--priority", "7")
    assert submitted.returncode == 0, submitted.stderr
    assert any_cluster.job(json.loads(submitted.stdout)["id"])["priority"] == 7
