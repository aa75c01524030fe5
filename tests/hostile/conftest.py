"""Fixtures of the hostile-input catalogue: a real master (thread), a source file, a processing job."""

from __future__ import annotations

import os

import pytest
import requests

from master.auth import Tokens
from tests.fixtures import ThreadedMaster, master_config

ADMIN = "hostile-admin-token-0123456789"
WORKER = "hostile-worker-token-0123456789"
SOURCE = "in/movie.mp4"
OUTPUT = "out/deep/result.mp4"


def _start(tmp_path, tokens: Tokens = Tokens(), **server) -> ThreadedMaster:
    import dataclasses

    # a long lease: a processing job must not go back to pending while a case runs (that would be a change)
    config = master_config(tmp_path, lease_seconds=600.0, max_claim_wait=0.5)
    if server:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **server))
    running = ThreadedMaster(config, tokens=tokens)
    path = running.root / SOURCE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(50_000))
    return running


@pytest.fixture
def master(tmp_path):
    """An anonymous master (no tokens) with ``in/movie.mp4`` in its storage root."""
    running = _start(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def secured(tmp_path):
    """A master with an admin and a worker token."""
    running = _start(tmp_path, Tokens(admin=ADMIN, worker=WORKER))
    yield running
    running.stop()


def submit(master, job_id: str, output: str = OUTPUT, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{master.url}/api/jobs", json={"id": job_id, "source_path": SOURCE,
                                                             "output_path": output, "profile": "h264-720p"},
                             headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def claim(master, worker_id: str = "w1", token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{master.url}/api/worker/claim", json={"worker_id": worker_id, "wait": 0},
                             headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def processing(master):
    """Job ``p1``, claimed by worker ``w1``: processing, its output to go to ``out/deep/result.mp4``."""
    submit(master, "p1")
    assert claim(master)["id"] == "p1"
    return "p1"


@pytest.fixture
def pending(master):
    """Job ``q1``, pending (submitted after ``processing`` when both are used, so it stays pending)."""
    submit(master, "q1", output="out/pending.mp4")
    return "q1"


def pytest_runtest_logreport(report):
    """With HOSTILE_REPORT=<file>: one line per case (id, outcome, what the master answered) for the lead's table."""
    path = os.environ.get("HOSTILE_REPORT")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    message = ""
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = (crash.message if crash else str(report.longrepr)).splitlines()[0][:400]
    with open(path, "a") as f:
        f.write(f"{report.nodeid}\t{report.when}\t{report.outcome.upper()}\t{message}\n")
