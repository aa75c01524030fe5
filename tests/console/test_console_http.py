"""The console over plain HTTP: sessions, XSRF, CSP, escaping and pagination (the browser tests are in
test_console_browser.py)."""

import json
import os
import re
import stat

import pytest
import requests

from master.auth import Tokens
from master.console.session import SESSION_COOKIE
from tests.fixtures import ThreadedMaster, master_config

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789"
WORKER = "worker-token-0123456789"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def secured(tmp_path):
    running = ThreadedMaster(master_config(tmp_path), tokens=Tokens(admin=ADMIN, worker=WORKER))
    yield running
    running.stop()


def login(master, token=ADMIN) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{master.url}/console/login", timeout=10)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text).group(1)
    session.post(f"{master.url}/console/login", data={"token": token, "_xsrf": xsrf, "next": "/console/queue"},
                 timeout=10, allow_redirects=False)
    session.xsrf = re.search(r'name="xsrf-token" content="([^"]+)"',
                             session.get(f"{master.url}/console/", timeout=10).text).group(1)
    return session


def test_pages_redirect_to_login_until_the_admin_token_is_given(secured):
    response = requests.get(f"{secured.url}/console/queue?status=failed", timeout=10, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/login?next=%2Fconsole%2Fqueue")
    assert requests.get(f"{secured.url}/console/events", timeout=10, allow_redirects=False).status_code == 401
    for target in ("//evil.example/", "/api/jobs", "https://evil.example/console/"):
        form = requests.get(f"{secured.url}/console/login", params={"next": target}, timeout=10).text
        assert 'name="next" value="/console/"' in form, target

    refused = login(secured, token=WORKER)
    assert SESSION_COOKIE not in refused.cookies
    assert refused.get(f"{secured.url}/console/queue", timeout=10, allow_redirects=False).status_code == 302

    session = login(secured)
    cookie = next(c for c in session.cookies if c.name == SESSION_COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"
    assert session.get(f"{secured.url}/console/queue", timeout=10, allow_redirects=False).status_code == 200
    # the session is the admin's on the JSON API too (a read needs no XSRF token)
    assert session.get(f"{secured.url}/api/jobs", timeout=10).status_code == 200

    secret = secured.config.database.path.parent / "console-secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600

    session.post(f"{secured.url}/console/logout", data={"_xsrf": session.xsrf}, timeout=10)
    assert session.get(f"{secured.url}/console/queue", timeout=10, allow_redirects=False).status_code == 302


def test_a_cookie_authenticated_change_needs_the_xsrf_token(secured):
    (secured.root / "in").mkdir()
    (secured.root / "in" / "a.mp4").write_bytes(b"source")
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    job = {"id": "j1", "source_path": "in/a.mp4", "output_path": "out/a.mp4", "profile": "h264-720p"}
    assert requests.post(f"{secured.url}/api/jobs", json=job, headers=bearer, timeout=10).status_code == 201
    session = login(secured)
    once = {"Connection": "close"}  # the master closes a connection whose request it refused unread
    refused = session.post(f"{secured.url}/api/jobs/j1/cancel", headers=once, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    wrong = session.post(f"{secured.url}/api/jobs/j1/cancel", headers={**once, "X-XSRFToken": "2|00|00|00"},
                         timeout=10)
    assert wrong.status_code == 403
    assert session.post(f"{secured.url}/console/retry-failed", headers=once, timeout=10).status_code == 403
    assert session.get(f"{secured.url}/api/jobs/j1", timeout=10).json()["status"] == "pending"
    cancelled = session.post(f"{secured.url}/api/jobs/j1/cancel", headers={"X-XSRFToken": session.xsrf}, timeout=10)
    assert cancelled.status_code == 200, cancelled.text
    # the API for workers, curl and the CLI is unchanged: a bearer token and no XSRF token
    retried = requests.post(f"{secured.url}/api/jobs/j1/retry", headers=bearer, timeout=10)
    assert retried.status_code == 200 and retried.json()["status"] == "pending"


def test_a_browser_request_needs_the_xsrf_token_on_a_master_without_tokens(master):
    """Without tokens the API is open, but another site's page must still not change anything through a
    visitor's browser: a request with the browser's fetch metadata needs the XSRF token."""
    (master.root / "in").mkdir()
    (master.root / "in" / "a.mp4").write_bytes(b"source")
    assert master.submit("in/a.mp4", "out/a.mp4", job_id="j1").status_code == 201
    forged = requests.post(f"{master.url}/api/jobs/j1/cancel", headers={"Sec-Fetch-Site": "cross-site"}, timeout=10)
    assert forged.status_code == 403
    assert requests.get(f"{master.url}/console/queue", timeout=10, allow_redirects=False).status_code == 200
    assert requests.post(f"{master.url}/api/jobs/j1/cancel", timeout=10).status_code == 200


def test_pages_are_strict_and_escape_every_value(master):
    (master.root / "in").mkdir()
    (master.root / "in" / f"{XSS}.mkv").write_bytes(b"source")
    assert master.submit(f"in/{XSS}.mkv", f"out/{XSS}.mp4", job_id="xss").status_code == 201
    for path in ("/console/", "/console/queue", "/console/jobs/xss", "/console/workers", "/console/submit",
                 f"/console/queue?q={XSS}"):
        response = requests.get(master.url + path, timeout=10)
        assert response.status_code == 200, path
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert "<img" not in response.text and "<script>" not in response.text, path
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), path
    for path in ("/console/?part=1", "/console/queue?part=1", "/console/jobs/xss?part=1", "/console/workers?part=1"):
        part = requests.get(master.url + path, timeout=10)
        assert part.status_code == 200 and "<html" not in part.text and "<img" not in part.text, path
    queue = requests.get(f"{master.url}/console/queue", timeout=10).text
    assert "&lt;img src=x onerror=alert(1)&gt;.mkv" in queue
    script = re.search(r'<script src="(/console/static/console.js\?v=\w+)"', queue).group(1)
    assert requests.get(master.url + script, timeout=10).headers["Content-Type"].endswith("javascript")


def test_the_queue_page_shows_one_page_of_ten_thousand_jobs(master):
    with master.store._transaction():
        for n in range(10_000):
            master.store._db.execute(
                "INSERT INTO jobs (id, status, source_path, output_path, profile, source_size, source_sha256,"
                " source_mtime_ns, max_attempts, created_at, updated_at) VALUES (?, 'failed', ?, ?, 'h264-720p',"
                " 1, '', 0, 3, ?, ?)", (f"job{n:05d}", f"in/movie{n}.mkv", f"out/movie{n}.mp4", n, n))
    page = requests.get(f"{master.url}/console/queue?status=failed&page=3", timeout=10)
    assert page.elapsed.total_seconds() < 2
    rows = re.findall(r'<tr data-job="([^"]+)"', page.text)
    assert rows == [f"job{n:05d}" for n in range(9899, 9849, -1)]
    assert "page 3 of 200" in page.text
    found = requests.get(f"{master.url}/console/queue?q=movie4242.mkv&part=1", timeout=10).text
    assert re.findall(r'<tr data-job="([^"]+)"', found) == ["job04242"]
    assert "<nav" not in found.replace('<nav class="pages"', "") and "<html" not in found  # the live part alone
    by_id = requests.get(f"{master.url}/console/queue?q=job00007&part=1", timeout=10).text
    assert re.findall(r'<tr data-job="([^"]+)"', by_id) == ["job00007"]


def test_a_session_outlives_a_restart_and_ends_with_a_new_admin_token(tmp_path):
    config = master_config(tmp_path)
    first = ThreadedMaster(config, tokens=Tokens(admin=ADMIN, worker=WORKER))
    session = login(first)
    first.stop()
    second = ThreadedMaster(config, tokens=Tokens(admin=ADMIN, worker=WORKER))
    try:
        assert session.get(f"{second.url}/console/queue", timeout=10, allow_redirects=False).status_code == 200
    finally:
        second.stop()
    rotated = ThreadedMaster(config, tokens=Tokens(admin="a-new-admin-token-0123456789", worker=WORKER))
    try:
        assert session.get(f"{rotated.url}/console/queue", timeout=10, allow_redirects=False).status_code == 302
        assert session.get(f"{rotated.url}/api/jobs", timeout=10).status_code == 401
    finally:
        rotated.stop()


def test_the_events_stream_sends_counts_and_running_jobs(master):
    (master.root / "in").mkdir()
    (master.root / "in" / "a.mp4").write_bytes(b"source")
    assert master.submit("in/a.mp4", "out/a.mp4", job_id="j1").status_code == 201
    assert master.claim("w1")["id"] == "j1"
    beat = requests.post(f"{master.url}/api/worker/heartbeat?job_id=j1", json={"worker_id": "w1", "progress": 40},
                         timeout=10)
    assert beat.status_code == 200
    with requests.get(f"{master.url}/console/events", stream=True, timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = stream.iter_lines(decode_unicode=True)
        data = next(line for line in lines if line.startswith("data: "))
    state = json.loads(data[len("data: "):])
    assert state["counts"]["processing"] == 1 and state["paused"] is False
    [running] = state["running"]
    assert running["id"] == "j1" and running["progress"] == 40 and running["worker"] == "w1"
    assert running["rate"] > 0 and running["eta"] is not None


def test_retry_all_failed_skips_a_job_whose_output_is_taken(master):
    (master.root / "in").mkdir()
    (master.root / "in" / "a.mp4").write_bytes(b"source")
    for n in range(3):
        assert master.submit("in/a.mp4", f"out/{n}.mp4", job_id=f"j{n}").status_code == 201
        requests.post(f"{master.url}/api/jobs/j{n}/cancel", timeout=10)
    with master.store._transaction():
        master.store._db.execute("UPDATE jobs SET status = 'failed'")
    (master.root / "out").mkdir()
    (master.root / "out" / "1.mp4").write_bytes(b"someone's file")
    page = requests.get(f"{master.url}/console/queue", timeout=10)
    xsrf = re.search(r'name="xsrf-token" content="([^"]+)"', page.text).group(1)
    answer = requests.post(f"{master.url}/console/retry-failed", headers={"X-XSRFToken": xsrf},
                           cookies=page.cookies, timeout=10)
    assert answer.json() == {"retried": 2, "skipped": 1}
    assert [master.job(f"j{n}")["status"] for n in range(3)] == ["pending", "failed", "pending"]
    assert requests.get(f"{master.url}/console/queue?page=99999999999999999999999", timeout=10).status_code == 200


def test_the_workers_page_shows_each_vulkan_device_as_text(master):
    capabilities = {"ffmpeg_version": "7.1", "accel": ["vulkan", "cpu"], "accel_mode": "auto",
                    "vulkan": {"available": True, "device": "GPU A", "type": "discrete"},
                    "devices": [{"position": 0, "available": True, "device": "GPU A", "type": "discrete",
                                 "decode": ["h264"]},
                                {"position": 1, "available": True, "device": "GPU B", "type": "discrete",
                                 "disabled": f"3 failures {XSS}"},
                                {"position": 2, "available": False, "error": "no such device"}]}
    registered = requests.post(f"{master.url}/api/worker/register", timeout=10, json={
        "worker_id": "gpu-1", "hostname": "box", "capabilities": capabilities})
    assert registered.status_code == 200
    page = re.sub(r"\s+", " ", requests.get(f"{master.url}/console/workers", timeout=10).text)
    assert "#0 GPU A (discrete) , decodes h264" in page
    assert "#1 GPU B (discrete) ; <strong>disabled</strong>: 3 failures &lt;img src=x onerror=alert(1)&gt;" in page
    assert "#2 not available: no such device" in page
    assert 'data-post="/api/workers/gpu-1/pause"' in page


def test_the_job_page_and_the_api_list_every_attempt(master):
    master.store.create_job(job_id="j1", source_path="in/a.mkv", output_path="out/a.mp4", profile="h264-720p",
                            source_size=1, source_sha256="00" * 32, source_mtime_ns=1, max_attempts=3)
    master.store.claim_next("w1", 60)
    master.store.fail("j1", worker_id="w1", error=f"ffmpeg said {XSS}", retryable=True, retry_delay=0)
    master.store.claim_next("w2", 60)

    attempts = requests.get(f"{master.url}/api/jobs/j1/attempts", timeout=10).json()["attempts"]
    assert [(a["attempt"], a["worker_id"], a["outcome"]) for a in attempts] == [(1, "w1", "pending")]
    page = requests.get(f"{master.url}/console/jobs/j1?part=1", timeout=10).text
    rows = re.findall(r'<td data-label="Worker">([^<]*)</td>.*?<td data-label="Outcome">([^<]*)</td>', page, re.S)
    assert rows == [("w1", "retried"), ("w2", "running")]
    assert XSS not in page and "ffmpeg said &lt;img src=x onerror=alert(1)&gt;" in page
    assert requests.get(f"{master.url}/api/jobs/nope/attempts", timeout=10).status_code == 404
