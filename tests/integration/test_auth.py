"""Bearer tokens: who may call what, and a master that will not run exposed without them."""

import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from master.auth import Access, Tokens
from tests.fixtures import ThreadedMaster, master_config

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789"
WORKER = "worker-token-0123456789"
BIN = Path(sys.executable).parent


@pytest.fixture
def secured(tmp_path):
    running = ThreadedMaster(master_config(tmp_path), tokens=Tokens(admin=ADMIN, worker=WORKER))
    (running.root / "in").mkdir()
    (running.root / "in" / "a.mp4").write_bytes(b"source")
    yield running
    running.stop()


def call(master, method, path, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, master.url + path, headers=headers, timeout=10, **kwargs)


JOB = {"source_path": "in/a.mp4", "output_path": "out/a.mp4", "profile": "h264-720p"}


def test_no_token_is_401_with_a_challenge(secured):
    response = call(secured, "GET", "/api/jobs")
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_is_401(secured):
    assert call(secured, "GET", "/api/jobs", token="nope").status_code == 401


def test_worker_token_cannot_submit(secured):
    response = call(secured, "POST", "/api/jobs", token=WORKER, json=JOB)
    assert response.status_code == 403 and response.json()["error"] == "forbidden"


def test_admin_token_submits_and_worker_token_claims(secured):
    assert call(secured, "POST", "/api/jobs", token=ADMIN, json={**JOB, "id": "a1"}).status_code == 201
    assert call(secured, "POST", "/api/worker/claim", token=None, json={"worker_id": "w"}).status_code == 401
    claimed = call(secured, "POST", "/api/worker/claim", token=WORKER, json={"worker_id": "w"})
    assert claimed.json()["id"] == "a1"
    assert call(secured, "GET", "/api/worker/download-video?job_id=a1", token=WORKER).content == b"source"


def test_upload_without_token_is_refused_before_the_body(secured):
    call(secured, "POST", "/api/jobs", token=ADMIN, json={**JOB, "id": "u1"})
    call(secured, "POST", "/api/worker/claim", token=WORKER, json={"worker_id": "w"})
    response = call(secured, "POST", "/api/worker/upload-video?job_id=u1", files={"video": b"x"})
    assert response.status_code == 401
    assert secured.job_with_token("u1", ADMIN)["status"] == "processing"


def test_health_and_metrics_stay_open(secured):
    assert call(secured, "GET", "/healthz").status_code == 200
    assert call(secured, "GET", "/metrics").status_code == 200


def test_worker_client_uses_its_token(secured, tmp_path):
    call(secured, "POST", "/api/jobs", token=ADMIN, json={**JOB, "id": "c1"})
    client = secured.client("w", token=WORKER)
    assert client.claim(0)["id"] == "c1"
    client.download_source_video("c1", tmp_path / "s.mp4")
    assert (tmp_path / "s.mp4").read_bytes() == b"source"


def test_access_table():
    tokens = Tokens(admin=ADMIN, worker=WORKER)
    assert tokens.allows(Access.ADMIN, f"Bearer {WORKER}") is False
    assert tokens.allows(Access.WORKER, f"Bearer {ADMIN}") is True
    assert tokens.allows(Access.READ, f"bearer {WORKER}") is True
    assert tokens.allows(Access.READ, "Basic abc") is None
    assert Tokens().allows(Access.ADMIN, None) is True


def run_check(tmp_path, config):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([str(BIN / "converter-master"), "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=30)


def test_exposed_master_without_tokens_refuses_to_start(tmp_path):
    result = run_check(tmp_path, {"server": {"host": "0.0.0.0"}})
    assert result.returncode == 2 and "auth" in result.stderr and "loopback" in result.stderr
    assert run_check(tmp_path, {"server": {"host": "0.0.0.0"}, "auth": {"allow_anonymous": True}}).returncode == 0


def test_token_files_are_read_with_variables_expanded(tmp_path, monkeypatch):
    (tmp_path / "admin").write_text(ADMIN + "\n")
    (tmp_path / "worker").write_text(WORKER)
    config = {"server": {"host": "0.0.0.0"}, "auth": {"admin_token_file": "${CREDS}/admin",
                                                      "worker_token_file": "${CREDS}/worker"}}
    monkeypatch.setenv("CREDS", str(tmp_path))
    assert run_check(tmp_path, config).returncode == 0
    (tmp_path / "worker").write_text("short")
    result = run_check(tmp_path, config)
    assert result.returncode == 2 and "at least 16" in result.stderr
