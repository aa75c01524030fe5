"""Hostile request lines and headers, sent byte for byte on raw sockets to a real master.

Oversized heads, bytes Tornado's parser refuses, lying Content-Length and Transfer-Encoding,
and broken Authorization headers: every one gets a 4xx with a JSON body, and changes nothing.
"""

from __future__ import annotations

import pytest

from tests.hostile.conftest import ADMIN, WORKER, submit
from tests.hostile.support import check_refusal, check_unchanged, exchange, request_head, snapshot

pytestmark = pytest.mark.integration

KiB = 1024
CLAIM = "/api/worker/claim"
CLAIM_BODY = b'{"worker_id":"w9","wait":0}'


def post(target: str, headers: dict | list, raw: tuple[bytes, ...] = ()) -> bytes:
    return request_head("POST", target, headers, raw)


# (id, request head, body, expected status(es), expected error code(s) or None for any)
CASES = [
    # sizes
    ("huge-header-100KiB", request_head("GET", "/api/jobs", {"X-Pad": "p" * (100 * KiB)}), b"", 431,
     "headers_too_large"),
    ("many-headers-100KiB", request_head("GET", "/api/jobs", [(f"X-H{i}", "v" * 40) for i in range(2500)]), b"",
     431, "headers_too_large"),
    ("huge-url-query-100KiB", request_head("GET", "/api/jobs?x=" + "u" * (100 * KiB)), b"", 414, "uri_too_long"),
    ("huge-url-path-100KiB", request_head("GET", "/api/jobs/" + "j" * (100 * KiB)), b"", 414, "uri_too_long"),
    ("url-20KiB-under-the-header-limit", request_head("GET", "/api/jobs?x=" + "u" * (20 * KiB)), b"", 414,
     "uri_too_long"),
    ("long-job-id-in-path-4KiB", request_head("GET", "/api/jobs/" + "j" * (4 * KiB)), b"", 400, "invalid_job_id"),
    ("job-id-percent-ff-in-path", request_head("GET", "/api/jobs/%ff%fe"), b"", 400, None),
    ("job-id-percent-00-in-path", request_head("GET", "/api/jobs/a%00b"), b"", 400, "invalid_job_id"),
    ("job-id-query-percent-ff", request_head("GET", "/api/worker/download-video?job_id=%ff"), b"", 400, None),
    # odd bytes
    ("x-worker-id-utf8-bytes", request_head("GET", "/api/worker/download-video?job_id=p1", {},
                                            (b"X-Worker-Id: \xc3\xa9t\xc3\xa9",)), b"", 400, "invalid_worker_id"),
    ("x-worker-id-latin1-ff", request_head("GET", "/api/worker/download-video?job_id=p1", {},
                                           (b"X-Worker-Id: \xff\xfe",)), b"", 400, "invalid_worker_id"),
    ("x-worker-id-nul", request_head("GET", "/api/worker/download-video?job_id=p1", {}, (b"X-Worker-Id: w\x001",)),
     b"", 400, None),
    ("header-value-with-bare-cr", request_head("GET", "/api/jobs", {}, (b"X-Odd: a\rb",)), b"", 400, None),
    ("header-line-without-colon", request_head("GET", "/api/jobs", {}, (b"this is not a header",)), b"", 400, None),
    ("header-starts-with-fold", request_head("GET", "/api/jobs", {}, (b" folded: continuation",)), b"", 400, None),
    ("header-name-with-space", request_head("GET", "/api/jobs", {}, (b"X Bad Name: 1",)), b"", 400, None),
    ("malformed-request-line", b"GARBAGE\r\nHost: x\r\n\r\n", b"", 400, None),
    ("request-line-bad-version", b"GET /api/jobs HTTP/9.9\r\nHost: x\r\n\r\n", b"", (400, 505), None),
    ("request-line-binary", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"", 400, None),
    # lying or broken framing
    ("content-length-letters", post(CLAIM, {"Content-Length": "abc"}), CLAIM_BODY, 400, None),
    ("content-length-negative", post(CLAIM, {"Content-Length": "-1"}), CLAIM_BODY, 400, None),
    ("content-length-plus-sign", post(CLAIM, {"Content-Length": "+27"}), CLAIM_BODY, 400, None),
    ("content-length-superscript-2", post(CLAIM, {}, (b"Content-Length: \xb2",)), CLAIM_BODY, 400, None),
    ("content-length-two-values", post(CLAIM, [("Content-Length", "27"), ("Content-Length", "28")]), CLAIM_BODY,
     400, None),
    ("content-length-list", post(CLAIM, {"Content-Length": "27, 28"}), CLAIM_BODY, 400, None),
    ("content-length-huge-number", post(CLAIM, {"Content-Length": "9" * 40}), CLAIM_BODY, 413, "body_too_large"),
    ("content-length-and-chunked", post(CLAIM, {"Content-Length": "27", "Transfer-Encoding": "chunked"}),
     b"1b\r\n" + CLAIM_BODY + b"\r\n0\r\n\r\n", 400, None),
    ("transfer-encoding-gzip", post(CLAIM, {"Transfer-Encoding": "gzip"}), CLAIM_BODY, 400, None),
    ("chunk-size-not-hex", post(CLAIM, {"Transfer-Encoding": "chunked"}), b"zz\r\n" + CLAIM_BODY + b"\r\n0\r\n\r\n",
     400, None),
    ("chunk-without-crlf", post(CLAIM, {"Transfer-Encoding": "chunked"}), b"1b\r\n" + CLAIM_BODY + b"XX0\r\n\r\n",
     400, None),
    ("content-encoding-gzip-garbage", post(CLAIM, {"Content-Length": "27", "Content-Encoding": "gzip"}), CLAIM_BODY,
     (400, 415), None),
]


@pytest.mark.parametrize("head, body, status, code", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_head(master, processing, head, body, status, code):
    before = snapshot(master)
    answer = exchange(master.url, head, [body] if body else [])
    check_refusal(answer, status, code)
    check_unchanged(master, before)


AUTH_CASES = [
    ("bearer-without-token", {"Authorization": "Bearer"}, ()),
    ("bearer-empty-token", {"Authorization": "Bearer    "}, ()),
    ("basic-scheme", {"Authorization": "Basic YWRtaW46YWRtaW4="}, ()),
    ("token-without-scheme", {"Authorization": ADMIN}, ()),
    ("bearer-10KiB-token", {"Authorization": "Bearer " + "t" * (10 * KiB)}, ()),
    ("bearer-admin-prefix", {"Authorization": "Bearer " + ADMIN[:-1]}, ()),
    ("bearer-admin-plus-suffix", {"Authorization": "Bearer " + ADMIN + "x"}, ()),
    ("bearer-latin1-bytes", {}, (b"Authorization: Bearer \xff\xfe\xfd",)),
    ("bearer-utf8-bytes", {}, (b"Authorization: Bearer " + ADMIN.encode() + "é".encode(),)),
    ("two-authorization-headers", [("Authorization", "Bearer nope"), ("Authorization", f"Bearer {WORKER}")], ()),
    ("bearer-worker-with-nul", {}, (b"Authorization: Bearer " + WORKER.encode() + b"\x00",)),
]


@pytest.mark.parametrize("headers, raw", [case[1:] for case in AUTH_CASES], ids=[case[0] for case in AUTH_CASES])
@pytest.mark.parametrize("method, target, body", [
    ("GET", "/api/jobs", b""),
    ("POST", "/api/jobs", b'{"source_path":"in/movie.mp4","output_path":"out/x.mp4","profile":"h264-720p"}'),
    ("POST", CLAIM, CLAIM_BODY),
], ids=["list", "submit", "claim"])
def test_bad_authorization_is_401(secured, method, target, body, headers, raw):
    submit(secured, "s1", token=ADMIN)
    before = snapshot(secured, ADMIN)
    head_headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if body:
        head_headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    answer = exchange(secured.url, request_head(method, target, head_headers, raw), [body] if body else [])
    nul = b"\x00" in b"".join(raw)
    body_json = check_refusal(answer, (400, 401) if nul else 401)
    if answer.status == 401:
        assert body_json["error"] == "unauthorized" and answer.headers.get("www-authenticate", "").startswith(
            "Bearer"), answer.describe()
    check_unchanged(secured, before, ADMIN)
