"""Hostile multipart bodies, to the worker's upload (a processing job) and to the multipart submit.

Two ``video`` parts, a ``video`` part that is a plain field (no filename), no or a wrong boundary,
bodies that end inside a part, garbage: each is a 400; the job is unchanged and still processing,
no job is created, and no temp or part file is left under the storage root. A body cut by the
client leaves nothing behind either.
"""

from __future__ import annotations

import os

import pytest

from tests.hostile.conftest import _start, claim, submit
from tests.hostile.support import (PROMPT, call, check_refusal, check_unchanged, chunked, exchange, multipart,
                                   request_head, snapshot)

pytestmark = pytest.mark.integration

DATA = os.urandom(300_000)
BOUNDARY = "hostile-boundary-7d3f"
TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body_and_type(kind: str, fields: list) -> tuple[bytes, str]:
    """The hostile body ``kind``; ``fields`` are the submit's text parts (empty for the worker's upload)."""
    if kind == "two-video-parts":
        return multipart(fields + [("video", "a.mp4", DATA), ("video", "b.mp4", b"second" * 1000)])
    if kind == "video-without-filename":
        return multipart(fields + [("video", None, DATA)])
    if kind == "video-as-field-and-file":
        return multipart(fields + [("video", None, b"text"), ("video", "a.mp4", DATA)])
    if kind == "missing-boundary":
        return multipart(fields + [("video", "a.mp4", DATA)])[0], "multipart/form-data"
    if kind == "empty-boundary":
        return multipart(fields + [("video", "a.mp4", DATA)])[0], "multipart/form-data; boundary="
    if kind == "wrong-boundary":
        return multipart(fields + [("video", "a.mp4", DATA)], boundary="other")[0], TYPE
    if kind == "truncated-inside-video":
        body, content_type = multipart(fields + [("video", "a.mp4", DATA)])
        return body[:len(body) - 100_000], content_type
    if kind == "truncated-after-part-headers":
        body, content_type = multipart(fields + [("video", "a.mp4", DATA)])
        return body[:body.index(b"octet-stream\r\n\r\n") + 16], content_type
    if kind == "truncated-inside-part-headers":
        body, content_type = multipart(fields + [("video", "a.mp4", DATA)])
        return body[:body.index(b'name="video"') + 8], content_type
    if kind == "no-closing-boundary":
        body, content_type = multipart(fields + [("video", "a.mp4", DATA)])
        return body[:-len(f"--{BOUNDARY}--\r\n")], content_type
    if kind == "empty-body":
        return b"", TYPE
    if kind == "only-closing-boundary":
        return f"--{BOUNDARY}--\r\n".encode(), TYPE
    if kind == "garbage":
        return os.urandom(50_000), TYPE
    if kind == "part-without-disposition":
        return (f"--{BOUNDARY}\r\nContent-Type: video/mp4\r\n\r\n".encode() + DATA +
                f"\r\n--{BOUNDARY}--\r\n".encode()), TYPE
    if kind == "part-header-2MiB":  # a part's headers are kept in memory: they must be bounded
        return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n'
                f"X-Pad: {'p' * (2 << 20)}\r\n\r\n".encode() + DATA + f"\r\n--{BOUNDARY}--\r\n".encode()), TYPE
    if kind == "not-multipart-json":
        return b'{"video": "x"}', "application/json"
    if kind == "multipart-mixed":
        return multipart(fields + [("video", "a.mp4", DATA)])[0], f"multipart/mixed; boundary={BOUNDARY}"
    if kind == "no-content-type":
        return multipart(fields + [("video", "a.mp4", DATA)])[0], ""
    raise AssertionError(kind)


KINDS = ["two-video-parts", "video-without-filename", "video-as-field-and-file", "missing-boundary",
         "empty-boundary", "wrong-boundary", "truncated-inside-video",
         "truncated-after-part-headers", "truncated-inside-part-headers", "no-closing-boundary", "empty-body",
         "only-closing-boundary", "garbage", "part-without-disposition", "part-header-2MiB",
         "not-multipart-json", "multipart-mixed", "no-content-type"]
SUBMIT_FIELDS = [("profile", None, b"h264-720p"), ("id", None, b"sub1")]


def _post(master, path: str, body: bytes, content_type: str):
    headers = {"Content-Type": content_type} if content_type else {}
    return call(master, "POST", path, data=body, headers=headers)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_multipart_upload_video(master, processing, kind):
    before = snapshot(master)
    body, content_type = body_and_type(kind, [])
    answer = _post(master, f"/api/worker/upload-video?job_id={processing}", body, content_type)
    check_refusal(answer, 400)
    check_unchanged(master, before)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_multipart_submit(master, kind):
    before = snapshot(master)
    body, content_type = body_and_type(kind, SUBMIT_FIELDS)  # not-multipart-json: the JSON submit, wrong fields
    check_refusal(_post(master, "/api/jobs", body, content_type), 400)
    check_unchanged(master, before)


@pytest.mark.parametrize("field, value", [("profile", b"\xff\xfe"), ("id", b"\xff"), ("id", b"../../x"),
                                          ("id", b"a" * 5000), ("profile", b"nope"), ("output_path", b"\xc0\xaf")],
                         ids=["profile-not-utf8", "id-not-utf8", "id-traversal", "id-5000-bytes", "profile-unknown",
                              "output-overlong-utf8-slash"])
def test_hostile_text_field_in_multipart_submit(master, field, value):
    before = snapshot(master)
    fields = {"profile": b"h264-720p", **{field: value}}
    body, content_type = multipart([(k, None, v) for k, v in fields.items()] + [("video", "a.mp4", DATA)])
    check_refusal(_post(master, "/api/jobs", body, content_type), 400)
    check_unchanged(master, before)


@pytest.mark.parametrize("target", ["upload-video", "submit"])
@pytest.mark.parametrize("cut_at", [100, 150_000])
def test_cut_multipart_body_leaves_nothing(master, processing, target, cut_at):
    """The client declares the whole body, sends part of it and goes away: no answer to read, and nothing
    may stay behind (temp file, job change, new job)."""
    before = snapshot(master)
    fields = [] if target == "upload-video" else SUBMIT_FIELDS
    body, content_type = multipart(fields + [("video", "a.mp4", DATA)])
    path = f"/api/worker/upload-video?job_id={processing}" if target == "upload-video" else "/api/jobs"
    from tests.fixtures import start_request, wait_for

    received = master.metrics.bytes_received._value.get()
    with start_request(master.url, "POST", path, {"Content-Type": content_type, "Content-Length": str(len(body))},
                       body[:cut_at]):  # cut once the master has read what was sent: the cut happens mid-body
        wait_for(lambda: master.metrics.bytes_received._value.get() - received >= cut_at, 10, 0.01,
                 f"the master to read the first {cut_at} bytes")
    check_unchanged(master, before, settle=True)


def test_a_good_upload_still_works_after_the_hostile_ones(master, processing):
    """The upload slots are not leaked by refused uploads: more hostile uploads than there are slots, then a good one."""
    for kind in KINDS[:8] * 3:
        body, content_type = body_and_type(kind, [])
        _post(master, f"/api/worker/upload-video?job_id={processing}", body, content_type)
    body, content_type = multipart([("video", "a.mp4", DATA)])
    answer = _post(master, f"/api/worker/upload-video?job_id={processing}", body, content_type)
    assert answer.status == 200, answer.describe()
    assert (master.root / "out/deep/result.mp4").read_bytes() == DATA


@pytest.fixture
def small_limit(tmp_path):
    """A master whose upload limit (server.max_upload_size) is 1 MiB, with job p1 processing."""
    running = _start(tmp_path, max_upload_size=1 << 20)
    submit(running, "p1")
    assert claim(running)["id"] == "p1"
    yield running
    running.stop()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("target", ["upload-video", "submit"])
def test_upload_over_max_upload_size_is_413(small_limit, target, framing):
    master = small_limit
    before = snapshot(master)
    fields = [] if target == "upload-video" else SUBMIT_FIELDS
    body, content_type = multipart(fields + [("video", "a.mp4", os.urandom(2 << 20))])
    path = "/api/worker/upload-video?job_id=p1" if target == "upload-video" else "/api/jobs"
    if framing == "chunked":
        head = request_head("POST", path, {"Content-Type": content_type, "Transfer-Encoding": "chunked"})
        answer = exchange(master.url, head, chunked(body))
    else:
        head = request_head("POST", path, {"Content-Type": content_type, "Content-Length": str(len(body))})
        answer = exchange(master.url, head, [body[:1000]], timeout=PROMPT)  # refused on the declared length
    check_refusal(answer, 413, "body_too_large")
    check_unchanged(master, before, settle=True)
