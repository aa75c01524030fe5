"""A caller without a (valid) token is refused before the master reads its body.

The client declares a 1 GiB body (or starts a chunked one), sends a hundred bytes and waits: a 401
(or 403 for a token without the right) must arrive within a few seconds, while almost all of the
body is still unsent. A master that buffered the body first would never answer in time.
"""

from __future__ import annotations

import base64

import pytest
import requests

from tests.hostile.conftest import ADMIN, WORKER, claim, submit
from tests.hostile.support import PROMPT, check_refusal, check_unchanged, exchange, request_head, snapshot

pytestmark = pytest.mark.integration

GiB = 1 << 30
ROUTES = [
    ("submit-json", "POST", "/api/jobs", "application/json"),
    ("submit-multipart", "POST", "/api/jobs", "multipart/form-data; boundary=b0undary"),
    ("register", "POST", "/api/worker/register", "application/json"),
    ("claim", "POST", "/api/worker/claim", "application/json"),
    ("heartbeat", "POST", "/api/worker/heartbeat?job_id=s1", "application/json"),
    ("fail", "POST", "/api/worker/fail?job_id=s1", "application/json"),
    ("release", "POST", "/api/worker/release?job_id=s1", "application/json"),
    ("complete", "POST", "/api/worker/complete?job_id=s1", "application/json"),
    ("cancel", "POST", "/api/jobs/s1/cancel", "application/json"),
    ("retry", "POST", "/api/jobs/s1/retry", "application/json"),
    ("upload-video", "POST", "/api/worker/upload-video?job_id=s1", "multipart/form-data; boundary=b0undary"),
    ("tus-create", "POST", "/api/uploads", "application/offset+octet-stream"),
    ("tus-patch", "PATCH", "/api/uploads/{upload}", "application/offset+octet-stream"),
]
ADMIN_ONLY = ["submit-json", "submit-multipart", "cancel", "retry"]


@pytest.fixture
def job(secured):
    """Job s1 processing for worker w1, with a tus upload started for its output."""
    submit(secured, "s1", token=ADMIN)
    claim(secured, "w1", token=WORKER)
    created = requests.post(f"{secured.url}/api/uploads", timeout=10, headers={
        "Authorization": f"Bearer {WORKER}", "Tus-Resumable": "1.0.0", "Upload-Length": str(GiB),
        "Upload-Metadata": f"job_id {base64.b64encode(b's1').decode()}"})
    assert created.status_code == 201, created.text
    return created.headers["Location"].rsplit("/", 1)[1]


def _head(method, path, content_type, upload, token, framing):
    headers = {"Content-Type": content_type, **framing,
               "Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Upload-Length": str(GiB)}
    if token:
        headers["Authorization"] = token
    return request_head(method, path.format(upload=upload), headers)


@pytest.mark.parametrize("framing", ["content-length-1GiB", "chunked"])
@pytest.mark.parametrize("token", ["none", "wrong", "basic"])
@pytest.mark.parametrize("method, path, content_type", [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES])
def test_unauthenticated_big_body_is_401_at_once(secured, job, method, path, content_type, token, framing):
    before = snapshot(secured, ADMIN)
    authorization = {"none": None, "wrong": "Bearer not-the-token-0123456789", "basic": "Basic YTpi"}[token]
    head = _head(method, path, content_type, job, authorization,
                 {"Content-Length": str(GiB)} if framing == "content-length-1GiB" else {"Transfer-Encoding": "chunked"})
    first = b"x" * 100 if framing == "content-length-1GiB" else b"64\r\n" + b"x" * 100 + b"\r\n"
    answer = exchange(secured.url, head, [first], timeout=PROMPT)
    body = check_refusal(answer, 401, "unauthorized")
    assert answer.headers.get("www-authenticate", "").startswith("Bearer"), answer.describe()
    assert body
    check_unchanged(secured, before, ADMIN)


@pytest.mark.parametrize("method, path, content_type", [r[1:] for r in ROUTES if r[0] in ADMIN_ONLY],
                         ids=ADMIN_ONLY)
def test_worker_token_on_admin_route_is_403_at_once(secured, job, method, path, content_type):
    before = snapshot(secured, ADMIN)
    head = _head(method, path, content_type, job, f"Bearer {WORKER}", {"Content-Length": str(GiB)})
    answer = exchange(secured.url, head, [b"x" * 100], timeout=PROMPT)
    check_refusal(answer, 403, "forbidden")
    check_unchanged(secured, before, ADMIN)
