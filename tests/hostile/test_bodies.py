"""Hostile JSON bodies to every JSON route, and bodies over the control routes' small limit.

Malformed JSON, the wrong JSON shapes, numbers JSON allows but the API must not take (huge
integers, 1e400, NaN/Infinity, booleans), ids of the wrong type: each is a 400 with the right code.
A body over the limit of a route that is not an upload is a 413 ``body_too_large``, whether its
length is declared or it comes chunked, and the master answers before it has read the body.
"""

from __future__ import annotations

import json
from typing import Iterable

import pytest

from tests.hostile.support import (MiB, PROMPT, check_refusal, check_unchanged, chunked, exchange, repeated,
                                   request_head, snapshot)

pytestmark = pytest.mark.integration

HUGE = 10 ** 400  # a valid JSON integer, far past 64 bits


def js(value) -> bytes:
    return json.dumps(value).encode()


def job(**fields) -> bytes:
    return js({"source_path": "in/movie.mp4", "output_path": "out/new.mp4", "profile": "h264-720p", **fields})


def with_raw(template: dict, field: str, literal: str) -> bytes:
    """``template`` as JSON with ``field`` set to a literal json.dumps cannot write (NaN, -Infinity, 1e400...)."""
    text = json.dumps({**template, field: "@@"})
    return text.replace('"@@"', literal).encode()


SUBMIT = {"source_path": "in/movie.mp4", "output_path": "out/new.mp4", "profile": "h264-720p"}
BEAT = {"worker_id": "w1"}
CLAIM_ = {"worker_id": "w9"}
REGISTER = {"worker_id": "w9", "hostname": "box", "capabilities": {}, "concurrency": 1}
FAIL_ = {"worker_id": "w1", "error": "boom", "retryable": True}
COMPLETE = {"worker_id": "w1", "size": 1, "sha256": "0" * 64}

JOBS = "/api/jobs"
HEARTBEAT = "/api/worker/heartbeat?job_id=p1"
CLAIM = "/api/worker/claim"
REGISTER_ = "/api/worker/register"
FAIL = "/api/worker/fail?job_id=p1"
RELEASE = "/api/worker/release?job_id=p1"
COMPLETE_ = "/api/worker/complete?job_id=p1"

# (id, path, body bytes, expected status, expected code(s))
CASES = [
    # the body itself
    ("submit-empty-body", JOBS, b"", 400, "invalid_json"),
    ("submit-whitespace-body", JOBS, b"  \r\n ", 400, "invalid_json"),
    ("submit-truncated-object", JOBS, b'{"source_path": "in/movie.mp4"', 400, "invalid_json"),
    ("submit-trailing-garbage", JOBS, job() + b" garbage", 400, "invalid_json"),
    ("submit-not-utf8", JOBS, b'{"source_path": "\xff\xfe"}', 400, "invalid_json"),
    ("submit-utf16-bom", JOBS, "\ufeff{}".encode("utf-16"), 400, "invalid_json"),
    ("submit-single-quotes", JOBS, b"{'id': 'x'}", 400, "invalid_json"),
    ("submit-nested-100k-lists", JOBS, b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ("submit-nested-100k-objects", JOBS, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "invalid_json"),
    ("submit-shape-list", JOBS, js([SUBMIT]), 400, "invalid_json"),
    ("submit-shape-string", JOBS, js("in/movie.mp4"), 400, "invalid_json"),
    ("submit-shape-number", JOBS, b"42", 400, "invalid_json"),
    ("submit-shape-huge-number", JOBS, str(HUGE).encode(), 400, "invalid_json"),
    ("submit-shape-null", JOBS, b"null", 400, "invalid_json"),
    ("submit-shape-true", JOBS, b"true", 400, "invalid_json"),
    ("submit-shape-NaN", JOBS, b"NaN", 400, "invalid_json"),
    ("submit-shape-nested-wrapper", JOBS, js({"job": SUBMIT}), 400, "unknown_field"),
    # the job id
    ("submit-id-number", JOBS, job(id=5), 400, "invalid_job_id"),
    ("submit-id-zero", JOBS, job(id=0), 400, "invalid_job_id"),
    ("submit-id-huge-int", JOBS, job(id=HUGE), 400, "invalid_job_id"),
    ("submit-id-float", JOBS, job(id=1.5), 400, "invalid_job_id"),
    ("submit-id-true", JOBS, job(id=True), 400, "invalid_job_id"),
    ("submit-id-false", JOBS, job(id=False), 400, "invalid_job_id"),
    ("submit-id-list", JOBS, job(id=["abc"]), 400, "invalid_job_id"),
    ("submit-id-object", JOBS, job(id={"id": "abc"}), 400, "invalid_job_id"),
    ("submit-id-empty", JOBS, job(id=""), 400, "invalid_job_id"),
    ("submit-id-129-chars", JOBS, job(id="a" * 129), 400, "invalid_job_id"),
    ("submit-id-newline-suffix", JOBS, job(id="abc\n"), 400, "invalid_job_id"),
    ("submit-id-unicode", JOBS, job(id="été"), 400, "invalid_job_id"),
    ("submit-id-lone-surrogate", JOBS, job(id="a\ud800"), 400, "invalid_job_id"),
    ("submit-id-slash", JOBS, job(id="a/b"), 400, "invalid_job_id"),
    ("submit-id-NaN", JOBS, with_raw(SUBMIT, "id", "NaN"), 400, ("invalid_json", "invalid_job_id")),
    # the other submit fields
    ("submit-source-number", JOBS, job(source_path=5), 400, "invalid_path"),
    ("submit-source-list", JOBS, job(source_path=["in/movie.mp4"]), 400, "invalid_path"),
    ("submit-source-null", JOBS, job(source_path=None), 400, "invalid_path"),
    ("submit-output-true", JOBS, job(output_path=True), 400, "invalid_path"),
    ("submit-output-object", JOBS, job(output_path={"path": "out/x.mp4"}), 400, "invalid_path"),
    ("submit-profile-number", JOBS, job(profile=720), 400, "unknown_profile"),
    ("submit-profile-list", JOBS, job(profile=["h264-720p"]), 400, "unknown_profile"),
    ("submit-profile-object", JOBS, job(profile={"h264-720p": 1}), 400, "unknown_profile"),
    ("submit-profile-null", JOBS, job(profile=None), 400, "unknown_profile"),
    ("submit-unknown-field", JOBS, job(args="-rm -rf"), 400, "unknown_field"),
    # heartbeat numbers
    ("heartbeat-progress-huge-int", HEARTBEAT, js({**BEAT, "progress": HUGE}), 400, "invalid_field"),
    ("heartbeat-progress-1e400", HEARTBEAT, with_raw(BEAT, "progress", "1e400"), 400, ("invalid_field",
                                                                                         "invalid_json")),
    ("heartbeat-progress-NaN", HEARTBEAT, with_raw(BEAT, "progress", "NaN"), 400, ("invalid_field", "invalid_json")),
    ("heartbeat-progress-Infinity", HEARTBEAT, with_raw(BEAT, "progress", "Infinity"), 400, ("invalid_field",
                                                                                               "invalid_json")),
    ("heartbeat-progress-negative", HEARTBEAT, js({**BEAT, "progress": -1}), 400, "invalid_field"),
    ("heartbeat-progress-true", HEARTBEAT, js({**BEAT, "progress": True}), 400, "invalid_field"),
    ("heartbeat-progress-string", HEARTBEAT, js({**BEAT, "progress": "50"}), 400, "invalid_field"),
    ("heartbeat-progress-list", HEARTBEAT, js({**BEAT, "progress": [50]}), 400, "invalid_field"),
    ("heartbeat-conversion-seconds-huge-int", HEARTBEAT, js({**BEAT, "conversion": {"conversion_seconds": HUGE}}),
     400, "invalid_field"),
    ("heartbeat-conversion-speed-NaN", HEARTBEAT,
     json.dumps({**BEAT, "conversion": {"speed": "@@"}}).replace('"@@"', "NaN").encode(), 400,
     ("invalid_field", "invalid_json")),
    ("heartbeat-conversion-speed-1e400", HEARTBEAT,
     json.dumps({**BEAT, "conversion": {"speed": "@@"}}).replace('"@@"', "1e400").encode(), 400,
     ("invalid_field", "invalid_json")),
    ("heartbeat-conversion-list", HEARTBEAT, js({**BEAT, "conversion": [1]}), 400, "invalid_field"),
    ("heartbeat-conversion-accel-number", HEARTBEAT, js({**BEAT, "conversion": {"accel": 1}}), 400, "invalid_field"),
    ("heartbeat-conversion-fallback-true", HEARTBEAT, js({**BEAT, "conversion": {"vulkan_fallback": True}}), 400,
     "invalid_field"),
    ("heartbeat-worker-id-number", HEARTBEAT, js({"worker_id": 1, "progress": 5}), 400, "invalid_worker_id"),
    ("heartbeat-worker-id-true", HEARTBEAT, js({"worker_id": True, "progress": 5}), 400, "invalid_worker_id"),
    ("heartbeat-worker-id-list", HEARTBEAT, js({"worker_id": ["w1"], "progress": 5}), 400, "invalid_worker_id"),
    ("heartbeat-worker-id-newline", HEARTBEAT, js({"worker_id": "w1\n", "progress": 5}), 400, "invalid_worker_id"),
    ("heartbeat-empty-body", HEARTBEAT, b"", 400, ("invalid_json", "invalid_worker_id")),
    ("heartbeat-shape-list", HEARTBEAT, js([BEAT]), 400, "invalid_json"),
    ("heartbeat-job-id-empty", "/api/worker/heartbeat?job_id=", js(BEAT), 400, ("invalid_job_id", "missing_job_id")),
    ("heartbeat-job-id-nul", "/api/worker/heartbeat?job_id=p1%00", js(BEAT), 400, "invalid_job_id"),
    ("heartbeat-job-id-newline", "/api/worker/heartbeat?job_id=p1%0A", js(BEAT), 400, "invalid_job_id"),
    ("heartbeat-job-id-bad-utf8", "/api/worker/heartbeat?job_id=%ff", js(BEAT), 400, None),
    # claim numbers
    ("claim-wait-huge-int", CLAIM, js({**CLAIM_, "wait": HUGE}), 400, "invalid_field"),
    ("claim-wait-1e400", CLAIM, with_raw(CLAIM_, "wait", "1e400"), 400, ("invalid_field", "invalid_json")),
    ("claim-wait-NaN", CLAIM, with_raw(CLAIM_, "wait", "NaN"), 400, ("invalid_field", "invalid_json")),
    ("claim-wait-negative", CLAIM, js({**CLAIM_, "wait": -1}), 400, "invalid_field"),
    ("claim-wait-true", CLAIM, js({**CLAIM_, "wait": True}), 400, "invalid_field"),
    ("claim-wait-string", CLAIM, js({**CLAIM_, "wait": "1"}), 400, "invalid_field"),
    ("claim-cache-free-huge-int", CLAIM, js({**CLAIM_, "cache_free_bytes": HUGE}), 400, "invalid_field"),
    ("claim-cache-free-2^63", CLAIM, js({**CLAIM_, "cache_free_bytes": 2 ** 64}), 400, "invalid_field"),
    ("claim-cache-free-float", CLAIM, js({**CLAIM_, "cache_free_bytes": 1.5}), 400, "invalid_field"),
    ("claim-cache-free-negative", CLAIM, js({**CLAIM_, "cache_free_bytes": -1}), 400, "invalid_field"),
    ("claim-worker-id-null", CLAIM, js({"worker_id": None}), 400, "invalid_worker_id"),
    ("claim-worker-id-object", CLAIM, js({"worker_id": {"id": "w"}}), 400, "invalid_worker_id"),
    # register numbers
    ("register-concurrency-huge-int", REGISTER_, js({**REGISTER, "concurrency": HUGE}), 400, "invalid_field"),
    ("register-concurrency-zero", REGISTER_, js({**REGISTER, "concurrency": 0}), 400, "invalid_field"),
    ("register-concurrency-float", REGISTER_, js({**REGISTER, "concurrency": 2.0}), 400, "invalid_field"),
    ("register-concurrency-true", REGISTER_, js({**REGISTER, "concurrency": True}), 400, "invalid_field"),
    ("register-concurrency-NaN", REGISTER_, with_raw(REGISTER, "concurrency", "NaN"), 400,
     ("invalid_field", "invalid_json")),
    ("register-hostname-number", REGISTER_, js({**REGISTER, "hostname": 5}), 400, "invalid_field"),
    ("register-hostname-256", REGISTER_, js({**REGISTER, "hostname": "h" * 256}), 400, "invalid_field"),
    ("register-capabilities-list", REGISTER_, js({**REGISTER, "capabilities": ["cpu"]}), 400, "invalid_field"),
    ("register-capabilities-string", REGISTER_, js({**REGISTER, "capabilities": "cpu"}), 400, "invalid_field"),
    ("register-worker-id-huge-int", REGISTER_, js({**REGISTER, "worker_id": HUGE}), 400, "invalid_worker_id"),
    # fail / release / complete
    ("fail-error-number", FAIL, js({**FAIL_, "error": 5}), 400, "invalid_field"),
    ("fail-error-empty", FAIL, js({**FAIL_, "error": ""}), 400, "invalid_field"),
    ("fail-error-null", FAIL, js({**FAIL_, "error": None}), 400, "invalid_field"),
    ("fail-retryable-string", FAIL, js({**FAIL_, "retryable": "yes"}), 400, "invalid_field"),
    ("fail-retryable-one", FAIL, js({**FAIL_, "retryable": 1}), 400, "invalid_field"),
    ("fail-retryable-null", FAIL, js({**FAIL_, "retryable": None}), 400, "invalid_field"),
    ("release-reason-number", RELEASE, js({"worker_id": "w1", "reason": 5}), 400, "invalid_field"),
    ("release-reason-list", RELEASE, js({"worker_id": "w1", "reason": ["x"]}), 400, "invalid_field"),
    ("complete-size-huge-int", COMPLETE_, js({**COMPLETE, "size": HUGE}), 400, None),
    ("complete-size-1e400", COMPLETE_, with_raw(COMPLETE, "size", "1e400"), 400, ("invalid_field", "invalid_json")),
    ("complete-size-negative", COMPLETE_, js({**COMPLETE, "size": -1}), 400, "invalid_field"),
    ("complete-size-float", COMPLETE_, js({**COMPLETE, "size": 1.0}), 400, "invalid_field"),
    ("complete-size-true", COMPLETE_, js({**COMPLETE, "size": True}), 400, "invalid_field"),
    ("complete-sha256-upper", COMPLETE_, js({**COMPLETE, "sha256": "A" * 64}), 400, "invalid_field"),
    ("complete-sha256-number", COMPLETE_, js({**COMPLETE, "sha256": 0}), 400, "invalid_field"),
    ("complete-worker-id-list", COMPLETE_, js({**COMPLETE, "worker_id": ["w1"]}), 400, "invalid_worker_id"),
]


@pytest.mark.parametrize("path, body, status, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_json_body(master, processing, path, body, status, code):
    before = snapshot(master)
    head = request_head("POST", path, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    check_refusal(exchange(master.url, head, [body] if body else []), status, code)
    check_unchanged(master, before)


def test_deeply_nested_capabilities_are_never_a_5xx(master):
    """600 levels parse (under Python's recursion limit) but may not be storable or showable: 200 or 400, never 500,
    and the fleet listing must still work afterwards (a stored worker that cannot be shown breaks it for good)."""
    capabilities = "{" + '"a":{' * 600 + "}" * 600 + "}"
    body = json.dumps({**REGISTER, "capabilities": "@@"}).replace('"@@"', capabilities).encode()
    head = request_head("POST", REGISTER_, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    answer = exchange(master.url, head, [body])
    assert answer.status in (200, 400), answer.describe()
    if answer.status == 400:
        check_refusal(answer, 400)
    workers = exchange(master.url, request_head("GET", "/api/workers"))
    assert workers.status == 200, f"GET /api/workers after it: {workers.describe()}"


# --- the control routes' body limit ------------------------------------------------------------------------

CONTROL_ROUTES = [
    ("submit", "POST", JOBS),
    ("register", "POST", REGISTER_),
    ("claim", "POST", CLAIM),
    ("heartbeat", "POST", HEARTBEAT),
    ("fail", "POST", FAIL),
    ("release", "POST", RELEASE),
    ("complete", "POST", COMPLETE_),
    ("cancel", "POST", "/api/jobs/p1/cancel"),
    ("retry", "POST", "/api/jobs/q1/retry"),
    ("list-jobs", "GET", "/api/jobs"),
    ("get-job", "GET", "/api/jobs/p1"),
    ("workers", "GET", "/api/workers"),
    ("healthz", "GET", "/healthz"),
]
ROUTE_IDS = [r[0] for r in CONTROL_ROUTES]
BIG = 2 * MiB


def padded(size: int) -> Iterable[bytes]:
    """A JSON object of exactly ``size`` bytes that names worker w1: valid, only too large."""
    start, end = b'{"worker_id":"w1","progress":50,"pad":"', b'"}'
    yield start
    yield from repeated(size - len(start) - len(end))
    yield end


@pytest.mark.parametrize("send", ["content-length", "chunked", "1GiB-declared"])
def test_big_body_to_no_route_is_404_or_413_at_once(master, processing, send):
    """No route: nothing to protect, but the body must not be read either."""
    before = snapshot(master)
    framing = {"Transfer-Encoding": "chunked"} if send == "chunked" else {
        "Content-Length": str(1 << 30 if send == "1GiB-declared" else BIG)}
    body = (chunked(b"".join(padded(BIG))) if send == "chunked" else
            [b"{" + b" " * 99] if send == "1GiB-declared" else padded(BIG))
    answer = exchange(master.url, request_head("POST", "/api/nothing/here", framing), body, timeout=PROMPT)
    check_refusal(answer, (404, 413))
    check_unchanged(master, before)


@pytest.mark.parametrize("method, path", [r[1:] for r in CONTROL_ROUTES], ids=ROUTE_IDS)
def test_2MiB_body_with_content_length_is_413(master, processing, pending, method, path):
    before = snapshot(master)
    head = request_head(method, path, {"Content-Type": "application/json", "Content-Length": str(BIG)})
    check_refusal(exchange(master.url, head, padded(BIG)), 413, "body_too_large")
    check_unchanged(master, before)


@pytest.mark.parametrize("method, path", [r[1:] for r in CONTROL_ROUTES], ids=ROUTE_IDS)
def test_2MiB_chunked_body_is_413(master, processing, pending, method, path):
    before = snapshot(master)
    head = request_head(method, path, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    check_refusal(exchange(master.url, head, chunked(b"".join(padded(BIG)))), 413, "body_too_large")
    check_unchanged(master, before)


@pytest.mark.parametrize("method, path", [r[1:] for r in CONTROL_ROUTES], ids=ROUTE_IDS)
def test_1GiB_declared_is_refused_before_the_body(master, processing, pending, method, path):
    """Content-Length: 1 GiB and 100 bytes sent: the 413 must come now, not after a gigabyte."""
    before = snapshot(master)
    head = request_head(method, path, {"Content-Type": "application/json", "Content-Length": str(1 << 30)})
    answer = exchange(master.url, head, [b'{"worker_id":"w1",' + b" " * 82], timeout=PROMPT)
    check_refusal(answer, 413, "body_too_large")
    check_unchanged(master, before)
