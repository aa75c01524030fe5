"""Hostile tus headers: creation (POST /api/uploads) and PATCH of an upload of a processing job.

Bad Upload-Length, negative and huge offsets, Upload-Metadata that is not base64, bad
Upload-Checksum, the wrong Tus-Resumable: each is the right 4xx with a JSON body; no upload is
created or moved on, no temp file is left, the job is unchanged.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.hostile.support import (check_refusal, check_unchanged, chunked, exchange, request_head, snapshot)

pytestmark = pytest.mark.integration

TUS = "1.0.0"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


JOB_META = f"job_id {b64(b'p1')}"
CREATE = {"Tus-Resumable": TUS, "Upload-Length": "1000", "Upload-Metadata": JOB_META}

# (id, headers to change (None removes one), raw header lines, expected status, code(s))
CREATE_CASES = [
    ("length-letters", {"Upload-Length": "abc"}, (), 400, "invalid_header"),
    ("length-negative", {"Upload-Length": "-1"}, (), 400, "invalid_header"),
    ("length-empty", {"Upload-Length": ""}, (), 400, "invalid_header"),
    ("length-float", {"Upload-Length": "1.5"}, (), 400, "invalid_header"),
    ("length-plus-sign", {"Upload-Length": "+5"}, (), 400, "invalid_header"),
    ("length-hex", {"Upload-Length": "0x10"}, (), 400, "invalid_header"),
    ("length-superscript-2", {"Upload-Length": None}, (b"Upload-Length: \xb2",), 400, "invalid_header"),
    ("length-missing", {"Upload-Length": None}, (), 400, "invalid_header"),
    ("length-2^63", {"Upload-Length": str(2 ** 63)}, (), 413, "body_too_large"),
    ("length-40-digits", {"Upload-Length": "9" * 40}, (), (400, 413), ("invalid_header", "body_too_large")),
    ("length-and-defer", {"Upload-Defer-Length": "1"}, (), 400, None),
    ("metadata-not-base64", {"Upload-Metadata": "job_id !!!"}, (), 400, "invalid_metadata"),
    ("metadata-missing-padding", {"Upload-Metadata": "job_id cDE"}, (), 400, "invalid_metadata"),
    ("metadata-no-job-id", {"Upload-Metadata": f"foo {b64(b'bar')}"}, (), 400, ("invalid_job_id", "invalid_metadata")),
    ("metadata-empty", {"Upload-Metadata": ""}, (), 400, ("invalid_job_id", "invalid_metadata")),
    ("metadata-job-id-not-utf8", {"Upload-Metadata": "job_id " + b64(b"p1\xff")}, (), 400,
     ("invalid_job_id", "invalid_metadata")),
    ("metadata-job-id-traversal", {"Upload-Metadata": f"job_id {b64(b'../../p1')}"}, (), 400, "invalid_job_id"),
    ("metadata-job-id-unknown", {"Upload-Metadata": f"job_id {b64(b'ghost')}"}, (), 404, "job_not_found"),
    ("metadata-job-pending", {"Upload-Metadata": f"job_id {b64(b'q1')}"}, (), 400, "invalid_job_state"),
    ("metadata-sha256-short", {"Upload-Metadata": f"{JOB_META},sha256 {b64(b'short')}"}, (), 400, "invalid_digest"),
    ("metadata-sha256-not-hex", {"Upload-Metadata": f"{JOB_META},sha256 {b64(b'z' * 64)}"}, (), 400,
     "invalid_digest"),
    ("metadata-profile-unknown", {"Upload-Metadata": f"profile {b64(b'nope')}"}, (), 400, "unknown_profile"),
    ("metadata-profile-not-utf8", {"Upload-Metadata": "profile " + b64(b"h264-720p\xff")}, (), 400,
     ("unknown_profile", "invalid_metadata")),
    ("metadata-source-id-number-like", {"Upload-Metadata": f"profile {b64(b'h264-720p')},id {b64(b'-1')}"}, (), 400,
     "invalid_job_id"),
    ("metadata-latin1-bytes", {"Upload-Metadata": None}, (b"Upload-Metadata: job_id \xff\xfe",), 400,
     "invalid_metadata"),
    ("tus-resumable-old", {"Tus-Resumable": "0.2.2"}, (), 412, "unsupported_tus_version"),
    ("tus-resumable-empty", {"Tus-Resumable": ""}, (), 412, "unsupported_tus_version"),
    ("tus-resumable-missing", {"Tus-Resumable": None}, (), 412, "unsupported_tus_version"),
    ("tus-resumable-list", {"Tus-Resumable": "1.0.0, 0.2.2"}, (), 412, "unsupported_tus_version"),
]


def _headers(base: dict, change: dict) -> dict:
    merged = {**base, **change}
    return {k: v for k, v in merged.items() if v is not None}


@pytest.mark.parametrize("change, raw, status, code", [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES])
def test_hostile_tus_creation(master, processing, pending, change, raw, status, code):
    before = snapshot(master)
    head = request_head("POST", "/api/uploads", {**_headers(CREATE, change), "Content-Length": "0"}, raw)
    check_refusal(exchange(master.url, head), status, code)
    check_unchanged(master, before)


@pytest.fixture
def upload(master, processing):
    """A tus upload of 1000 bytes for job p1, at offset 0."""
    answer = exchange(master.url, request_head("POST", "/api/uploads", {**CREATE, "Content-Length": "0"}))
    assert answer.status == 201, answer.describe()
    return answer.headers["location"]


PIECE = b"x" * 100
PATCH = {"Tus-Resumable": TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
# (id, headers to change, raw lines, body, expected status, code(s))
PATCH_CASES = [
    ("offset-negative", {"Upload-Offset": "-1"}, (), PIECE, 400, "invalid_header"),
    ("offset-letters", {"Upload-Offset": "abc"}, (), PIECE, 400, "invalid_header"),
    ("offset-empty", {"Upload-Offset": ""}, (), PIECE, 400, "invalid_header"),
    ("offset-missing", {"Upload-Offset": None}, (), PIECE, 400, "invalid_header"),
    ("offset-superscript-2", {"Upload-Offset": None}, (b"Upload-Offset: \xb2",), PIECE, 400, "invalid_header"),
    ("offset-float", {"Upload-Offset": "0.0"}, (), PIECE, 400, "invalid_header"),
    ("offset-huge", {"Upload-Offset": "9" * 40}, (), PIECE, (400, 409), ("invalid_header", "offset_mismatch")),
    ("offset-2^63", {"Upload-Offset": str(2 ** 63)}, (), PIECE, (400, 409), ("invalid_header", "offset_mismatch")),
    ("offset-ahead", {"Upload-Offset": "5"}, (), PIECE, 409, "offset_mismatch"),
    ("checksum-no-digest", {"Upload-Checksum": "sha256"}, (), PIECE, 400, "invalid_checksum"),
    ("checksum-not-base64", {"Upload-Checksum": "sha256 !!!"}, (), PIECE, 400, "invalid_checksum"),
    ("checksum-three-words", {"Upload-Checksum": f"sha256 {b64(hashlib.sha256(PIECE).digest())} x"}, (), PIECE, 400,
     "invalid_checksum"),
    ("checksum-md5", {"Upload-Checksum": f"md5 {b64(hashlib.md5(PIECE).digest())}"}, (), PIECE, 400,
     "unsupported_checksum_algorithm"),
    ("checksum-wrong-length", {"Upload-Checksum": f"sha256 {b64(b'short')}"}, (), PIECE, 400, "invalid_checksum"),
    ("checksum-empty", {"Upload-Checksum": ""}, (), PIECE, 400, "invalid_checksum"),
    ("repr-digest-garbage", {"Repr-Digest": "sha-256=:!!!:"}, (), PIECE, 400, "invalid_digest"),
    ("repr-digest-wrong-length", {"Repr-Digest": f"sha-256=:{b64(b'short')}:"}, (), PIECE, 400, "invalid_digest"),
    ("content-type-json", {"Content-Type": "application/json"}, (), PIECE, 415, "unsupported_media_type"),
    ("content-type-missing", {"Content-Type": None}, (), PIECE, 415, "unsupported_media_type"),
    ("tus-resumable-old", {"Tus-Resumable": "0.2.2"}, (), PIECE, 412, "unsupported_tus_version"),
    ("tus-resumable-missing", {"Tus-Resumable": None}, (), PIECE, 412, "unsupported_tus_version"),
    ("body-past-upload-length", {}, (), b"y" * 2000, 413, "body_too_large"),
]


@pytest.mark.parametrize("change, raw, body, status, code", [c[1:] for c in PATCH_CASES],
                         ids=[c[0] for c in PATCH_CASES])
def test_hostile_tus_patch(master, upload, change, raw, body, status, code):
    before = snapshot(master)
    head = request_head("PATCH", upload, {**_headers(PATCH, change), "Content-Length": str(len(body))}, raw)
    check_refusal(exchange(master.url, head, [body]), status, code)
    check_unchanged(master, before)


def test_chunked_patch_past_upload_length_is_413(master, upload):
    before = snapshot(master)
    head = request_head("PATCH", upload, {**PATCH, "Transfer-Encoding": "chunked"})
    check_refusal(exchange(master.url, head, chunked(b"z" * 5000, size=1000)), 413, "body_too_large")
    # the first 1000 bytes were in bounds and were written, then the PATCH was dropped whole: same size, new mtime
    check_unchanged(master, before, settle=True, ignore_mtime=True)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("path, status, code", [
    ("/api/uploads/" + "0" * 32, 404, "upload_not_found"),
    ("/api/uploads/not-an-upload", 404, "not_found"),
    ("/api/uploads/" + "A" * 32, 404, "not_found"),
], ids=["unknown-id", "not-hex", "upper-hex"])
def test_unknown_uploads_are_404(master, upload, method, path, status, code):
    before = snapshot(master)
    head = request_head(method, path, {**PATCH, "Content-Length": str(len(PIECE))})
    check_refusal(exchange(master.url, head, [PIECE]), status, code)
    check_unchanged(master, before)


def test_delete_with_wrong_tus_version_is_412(master, upload):
    before = snapshot(master)
    head = request_head("DELETE", upload, {"Tus-Resumable": "2.0.0"})
    check_refusal(exchange(master.url, head), 412, "unsupported_tus_version")
    check_unchanged(master, before)
